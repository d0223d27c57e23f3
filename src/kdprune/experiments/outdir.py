"""The output folder of a command: checked, and stamped with the resolved config."""

from __future__ import annotations

from pathlib import Path

from kdprune import __version__, distributed
from kdprune.errors import UserError
from kdprune.experiments.config import neutral_values, to_dict
from kdprune.io import remove_stale_temps, write_yaml

# Keys that may change between an interrupted run and its resumption.
_RESUMABLE_KEYS = {"resume", "progress", "device"}
# How a run computes, not what: a resumed run keeps what it recorded, whatever today's default or flag.
_RECORDED_KEYS = ("channels_last", "compile")


def follow_recorded(cfg, log=None):
    """``cfg`` with the memory format and compilation that the run in ``--out`` recorded, when resuming it
    (a run started under another default must not switch layouts half-way: float results would mix)."""
    saved = Path(cfg.out) / "config.yaml"
    if not getattr(cfg, "resume", False) or not saved.is_file():
        return cfg
    import yaml
    from dataclasses import replace

    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return cfg  # prepare_out reports an unreadable config
    keep = {k: old[k] for k in _RECORDED_KEYS if k in old and hasattr(cfg, k) and old[k] != getattr(cfg, k)}
    if keep and log is not None:
        log(f"resuming {cfg.out} with {', '.join(f'{k}={v}' for k, v in keep.items())} as it recorded")
    return replace(cfg, **keep) if keep else cfg


def prepare_out(cfg, command: str, is_main: bool = True) -> Path:
    """Check ``--out`` and write ``config.yaml``; refuse to mix two different runs in one folder."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    saved = out / "config.yaml"
    resolved = {"command": command, "kdprune_version": __version__, **to_dict(cfg)}
    if distributed.synced(saved.is_file):
        if not cfg.resume:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        import yaml

        old = yaml.safe_load(saved.read_text()) or {}
        # a run written before an option existed behaved as that option's neutral value
        old = {**{k: v for k, v in neutral_values(cfg).items() if k not in old}, **old}
        for k, v in resolved.items():
            if k not in _RESUMABLE_KEYS and k != "kdprune_version" and old.get(k) != v:
                raise UserError(f"cannot resume {out}: {k} was {old.get(k)!r}, now {v!r}")
        if is_main:  # this run's folder is ours: what a killed write left half-done goes
            remove_stale_temps(out, recursive=True)
        distributed.barrier()
        return out
    error = None
    if is_main:  # rank 0 creates the folder; every rank gets its verdict, so none waits for a dead rank 0
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
            write_yaml(saved, resolved)
        except OSError as e:
            error = f"cannot write to --out {out}: {e.strerror or e}"
    error = distributed.synced(lambda: error)
    if error:
        raise UserError(error)
    return out
