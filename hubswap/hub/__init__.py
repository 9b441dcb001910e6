"""The Hub: everything hubswap does through ``huggingface_hub``, one module per job.

    hub.errors    huggingface_hub's exceptions -> one line and a hint (a table), retries
    hub.resolve   a Hub model pinned to a commit: needed files, their records, preflight reads
    hub.download  verified, resumable downloads into the huggingface_hub cache
    hub.lock      the recipe's lock file, ``<recipe>.lock.json``
    hub.publish   a build's model folder as one commit

The token comes from huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``), and
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache behave as users of the ecosystem expect.
"""
