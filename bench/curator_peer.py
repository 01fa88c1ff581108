"""One Curator 0.1.31 pass over N prompts against an OpenAI-compatible base URL,
asking for text only (Curator keeps no logprobs). Runs in Curator's own venv
(bench/.venv-curator, made by bench/_curator.py), never in the project's: it
pins other versions of openai and pydantic. Prints one JSON line:
{"runs": n, "seconds": s, "cpu_s": c} (CPU of this process and its children,
from just before the pass to just after; imports and start-up excluded).

    bench/.venv-curator/bin/python bench/curator_peer.py --base-url URL --runs N --tokens T
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

USER = "Write a short paragraph about {topic}."


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="…/v1 of an OpenAI-compatible server")
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True, help="max_tokens of each request")
    parser.add_argument("--offset", type=int, default=0, help="first subject number")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    args = parser.parse_args()

    # A cache of its own per pass (Curator would otherwise answer a repeated
    # pass from disk), and nothing sent anywhere but the fake.
    cache = tempfile.mkdtemp(prefix="nexc-bench-curator-")
    atexit.register(shutil.rmtree, cache, True)  # on failures too
    os.environ.setdefault("CURATOR_CACHE_DIR", cache)
    os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
    os.environ.setdefault("CURATOR_VIEWER", "0")
    os.environ.setdefault("CURATOR_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("POSTHOG_DISABLED", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # tiktoken would download its encodings (no network here); litellm, a
    # dependency of Curator, ships cl100k_base and o200k_base under the names
    # tiktoken's cache uses.
    import litellm

    tokenizers = os.path.join(os.path.dirname(litellm.__file__), "litellm_core_utils", "tokenizers")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", tokenizers)

    from bespokelabs import curator

    prompts = [
        USER.format(topic=f"subject {i}") for i in range(args.offset, args.offset + args.runs)
    ]
    llm: Any = curator.LLM(
        model_name="gpt-4o-mini",
        backend="openai",
        generation_params={"max_tokens": args.tokens},
        backend_params={
            "base_url": args.base_url,
            "api_key": os.environ["OPENAI_API_KEY"],
            # The fake enforces no limits: let Curator's own limiter not be the bottleneck.
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 10_000_000_000,
            "max_concurrent_requests": args.concurrency,
            "max_retries": 0,
            "require_all_responses": True,
        },
    )
    cpu, started = _cpu_s(), time.perf_counter()
    result = llm(prompts)
    seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu
    rows = len(result.dataset) if hasattr(result, "dataset") else len(result)
    print(json.dumps({"runs": rows, "seconds": seconds, "cpu_s": cpu}), flush=True)
    sys.exit(0 if rows == args.runs else 1)


if __name__ == "__main__":
    main()
