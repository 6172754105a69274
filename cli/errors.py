"""File-system errors of a stage said in one line: what could not be done to which path, and what to do."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

from cli.stage import Stage
from common.config import StageConfig, option_name


class StageOSError(Exception):
    """An OSError of one stage, with what the CLI needs to say it in one line."""

    def __init__(self, name: str, stage: Stage, cfg: StageConfig, err: OSError) -> None:
        super().__init__(describe_os_error(name, stage, cfg, err))


# errno -> (what could not be done, what to do); {option} names the path's option, {resume} the stage's resume hint
_OS_ERROR_ADVICE = {
    errno.EACCES: ("cannot access", "fix its permissions or choose another {option}"),
    errno.EROFS: ("cannot write", "choose another {option}, on a writable disk"),
    errno.ENOSPC: ("cannot write", "free some space or choose another {option}, then {resume}"),
    errno.EISDIR: ("cannot write", "give {option} a file path, not a folder"),
    errno.ENOTDIR: ("cannot create", "remove that file or choose another {option}"),
    errno.EEXIST: ("cannot create", "a file is in the way: remove it or choose another {option}"),
}
_OS_ERROR_ADVICE[errno.EPERM] = _OS_ERROR_ADVICE[errno.EACCES]
_OS_ERROR_ADVICE[errno.EDQUOT] = _OS_ERROR_ADVICE[errno.ENOSPC]


def describe_os_error(name: str, stage: Stage, cfg: StageConfig, err: OSError) -> str:
    """One line for an OSError of stage `name`: '<stage>: <what> <path>: <reason>; <what to do>'.

    An OSError this project raises with a whole sentence (no errno: a missing input, a store in use, a full
    disk found before writing) is said as it is.
    """
    if err.strerror is None:
        return str(err)
    what, advice = _OS_ERROR_ADVICE.get(err.errno, ("cannot use", "check the path and the disk"))
    path = str(err.filename) if err.filename is not None else ""
    return (f"{name}: {what} {path}: {err.strerror}; "
            + advice.format(option=_option_of(stage, cfg, path), resume=stage.resume_hint(cfg)))


def _option_of(stage: Stage, cfg: StageConfig, path: str) -> str:
    """The option naming `path`: an output it belongs to (inside it, on the way to it, or a file beside it named
    after it, like STORE.h5.partial), else the option whose value holds it (the longest), else "path"."""
    if not path:
        return "path"
    target = Path(os.path.abspath(path))
    for output in stage.writes(cfg):
        written = Path(os.path.abspath(output.path))
        if (target.is_relative_to(written) or written.is_relative_to(target)
                or (target.parent == written.parent and target.name.startswith(written.name))):
            return output.option
    matches = [(len(value), option_name(spec.name)) for spec in dataclasses.fields(cfg)
               if isinstance(value := getattr(cfg, spec.name), str) and value
               and target.is_relative_to(os.path.abspath(value))]
    return max(matches)[1] if matches else "path"
