"""Run one stage in a fresh process and stop it at a chosen write into the run (test_crash_safety.py).

    python killpoint.py '{"stage": "stats", "run": "RUN", "kwargs": {...}, "mode": "during", "k": 3}'
    python killpoint.py --serve      # a fork server: one JSON spec per stdin line, one reply line each

Every file of a run reaches its final name through os.replace (atomic writes), so the k-th
rename whose destination lies in the run is a precise, repeatable point in the stage:

- "during": the k-th temporary is cut to half its size (what a kill in the middle of writing
  leaves), then the process SIGKILLs itself before the rename;
- "after": the k-th rename happens, then SIGKILL (the file is in place, the rest is not);
- "pause": at the k-th rename print "paused", wait for a line on stdin, then carry on
  (a stage that is really in the middle of its work, for the run-lock tests).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main(spec: dict) -> None:
    run = Path(spec["run"]).resolve()
    mode, k = spec.get("mode"), int(spec.get("k", 0))
    real = os.replace
    seen = 0

    def replace(src, dst, *a, **kw):
        nonlocal seen
        if Path(dst).resolve().is_relative_to(run):
            seen += 1
            if seen == k:
                if mode == "during":
                    os.truncate(src, os.path.getsize(src) // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "pause":
                    print("paused", flush=True)
                    sys.stdin.readline()
                real(src, dst, *a, **kw)
                if mode == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                return None
        return real(src, dst, *a, **kw)

    os.replace = replace
    kwargs = spec.get("kwargs") or {}
    force = bool(spec.get("force"))  # rerun a complete stage with other options
    stage = spec["stage"]
    if stage == "stats":
        from saelineage.stats.config import StatsConfig
        from saelineage.stats.stage import run_stats

        run_stats(run, StatsConfig(**kwargs), force=force, progress=False)
    elif stage == "analyze":
        from saelineage.lineage.config import AnalyzeConfig
        from saelineage.lineage.stage import run_analyze

        run_analyze(run, AnalyzeConfig(**kwargs), force=force, progress=False)
    elif stage == "ablate":
        import saelineage.causal.stage as ablate_stage
        from saelineage.causal.config import AblateConfig

        ablate_stage.run_ablate(run, AblateConfig(**kwargs), force=force, progress=False)
    elif stage == "cli":  # the command line itself: its exit status and output are the result
        from saelineage.cli import main as cli_main

        sys.argv = ["saelineage", *spec["argv"]]
        cli_main()
    else:
        raise SystemExit(f"unknown stage {stage}")
    print("done", flush=True)


def serve() -> None:
    """Import the stages (and the model code they load) once, then fork one child per spec.

    Importing torch/transformers takes seconds and a kill test needs a fresh process per kill;
    forking from a process that imported but never computed anything gives that in milliseconds
    (no OpenMP/thread pool exists yet that a child could inherit half-alive). Replies
    {"signal": N or null, "code": exit status or null} once the child has ended; the child's
    output goes to spec["log"].
    """
    import plotly.graph_objects  # noqa: F401  (ablations.html)
    import plotly.subplots  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    import saelineage.causal.stage  # noqa: F401
    import saelineage.lineage.stage  # noqa: F401
    import saelineage.models.loading  # noqa: F401
    import saelineage.run_model  # noqa: F401
    import saelineage.saes.loading  # noqa: F401
    import saelineage.stats.stage  # noqa: F401

    reply = sys.stdout
    print("ready", file=reply, flush=True)
    for line in sys.stdin:
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                null = os.open(os.devnull, os.O_RDONLY)
                log = os.open(spec.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                main(spec)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out = {
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }
        print(json.dumps(out), file=reply, flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(json.loads(sys.argv[1]))
