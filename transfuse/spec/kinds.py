"""The YAML file kinds transfuse reads: a registry from a kind's name to its spec dataclass,
its loader and its ``--set`` schema.

=========  ==================================================  =======================
kind       top-level dataclass                                 command
=========  ==================================================  =======================
run        :class:`transfuse.config.RunSpec`                   (a stored spec)
study      :class:`transfuse.study.spec.StudySpec`             ``transfuse study ...``
chain      :class:`transfuse.selftrain.spec.ChainSpec`         ``transfuse selftrain``
med3d      :class:`transfuse.pretrain.config.PretrainSpec`     ``transfuse pretrain med3d``
ssl        :class:`transfuse.pretrain.ssl_config.SSLSpec`      ``transfuse pretrain ssl``
=========  ==================================================  =======================

.. code-block:: python

    load_file("chain", "examples/selftrain_pneumonia.yaml", sets=["generations=2"])

The loaders, dataclasses and schemas are named by dotted path (``package.module:name``) and
imported on first use, so this module imports nothing of transfuse but the registry and its
errors (every package may use it without an import cycle, and ``import transfuse.spec.kinds``
loads no torch). A kind's entry (:attr:`Entry.meta`):

* ``spec``: the top-level dataclass (whose fields are the file's top-level keys);
* ``load``: ``load(path, **options) -> spec``, read and validate a file;
* ``load_set``: ``load_set(path, *, sets, **options) -> spec``, the same with ``--set``
  overrides applied to the file's keys before it is validated (or to the spec after);
* ``schema``: ``schema(parsed) -> {key: type or section}``, the ``--set`` keys (``parsed``: the
  file's mapping, for ``study`` its :class:`~transfuse.study.spec.StudySpec`);
* ``what``: the kind in words, for messages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._registry import Registry

__all__ = ["FILE_KINDS", "resolve", "load_file", "file_spec", "set_schema"]


def resolve(dotted: str) -> Any:
    """The object a ``package.module:name`` path names (imported now)."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _lazy(dotted: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return resolve(dotted)(*args, **kwargs)

    call.__name__ = call.__qualname__ = dotted.rpartition(":")[2]
    call.__doc__ = f"Calls {dotted} (imported on first use)."
    return call


#: kind name → loader (``Entry.fn``, imported on first call), metadata as the module says.
FILE_KINDS: Registry[Callable[..., Any]] = Registry("file kind", list_command="transfuse --help")


def _add(name: str, *, spec: str, load: str, load_set: str, schema: str, what: str) -> None:
    FILE_KINDS.add(name, _lazy(load), spec=spec, load=load, load_set=load_set, schema=schema,
                   what=what)


_add("run", spec="transfuse.config:RunSpec", load="transfuse.overrides:load_run",
     load_set="transfuse.overrides:load_run_overridden", schema="transfuse.overrides:run_schema",
     what="run spec")
_add("study", spec="transfuse.study.spec:StudySpec", load="transfuse.study.spec:load_study",
     load_set="transfuse.overrides:load_study_overridden",
     schema="transfuse.overrides:study_schema", what="study")
_add("chain", spec="transfuse.selftrain.spec:ChainSpec", load="transfuse.selftrain.spec:load_chain",
     load_set="transfuse.overrides:load_chain_overridden",
     schema="transfuse.overrides:chain_schema", what="chain")
_add("med3d", spec="transfuse.pretrain.config:PretrainSpec",
     load="transfuse.pretrain.config:load_pretrain",
     load_set="transfuse.overrides:load_pretrain_overridden",
     schema="transfuse.overrides:pretrain_schema", what="Med3D")
_add("ssl", spec="transfuse.pretrain.ssl_config:SSLSpec", load="transfuse.pretrain.ssl_config:load_ssl",
     load_set="transfuse.overrides:load_ssl_overridden",
     schema="transfuse.pretrain.ssl_config:ssl_schema", what="self-supervised")


def load_file(kind: str, path: str | Path, *, sets: Sequence[str] = (), **options: Any) -> Any:
    """Read, override (``sets``, ``KEY=VALUE`` texts) and validate a file of ``kind``.

    Args:
        kind: a registered kind (``study``, ``chain``, ``med3d``, ``ssl``, ``run``).
        options: passed to the kind's loader (``validate=False`` for a study).

    Raises:
        ConfigError: an unknown kind, or the file's (one line, naming the file and the key).
    """
    entry = FILE_KINDS.get(kind)
    if sets:
        return resolve(entry.meta["load_set"])(path, sets=list(sets), **options)
    return entry.fn(path, **options)


def file_spec(kind: str) -> type:
    """The top-level dataclass of a file of ``kind``."""
    return resolve(FILE_KINDS.get(kind).meta["spec"])  # type: ignore[no-any-return]


def set_schema(kind: str, parsed: Any) -> dict[str, Any]:
    """The ``--set`` keys of a file of ``kind`` (``parsed``: see the module docstring)."""
    return resolve(FILE_KINDS.get(kind).meta["schema"])(parsed)  # type: ignore[no-any-return]
