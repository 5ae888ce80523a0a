"""Paper replications; one sub-package per paper.

`python -m papers.<name>` with an unknown name is one error line naming the known papers (Python's own message
would name no paper): checked here, the package being imported before its sub-package is looked up."""
import sys
from pathlib import Path


def _check_requested_paper(argv: list[str]) -> None:
    """Exit with one `error:` line when the interpreter was started as `python -m papers.<unknown>`."""
    if "-m" not in argv[:-1]:
        return
    target = argv[argv.index("-m") + 1]
    here = Path(__file__).parent
    if not target.startswith("papers.") or target.count(".") != 1:
        return
    known = sorted(p.name for p in here.iterdir() if (p / "__main__.py").exists())
    if target.split(".")[1] not in known:
        print(f"error: no paper {target.split('.')[1]!r} (python -m {target}); known: {', '.join(known)} "
              f"(python -m papers.<paper> run|report|runs|check)", file=sys.stderr)
        sys.exit(2)


_check_requested_paper(getattr(sys, "orig_argv", []))
