"""Copy the evidence of a study out of a workspace into a small store of its own.

    python docs/findings/snapshot_store.py WORKSPACE STUDY DEST
    python docs/findings/render.py --from-store DEST     # its study's results.json, re-rendered

The snapshot is not committed (issue 28: docs/findings/<study>/ keeps the study's results JSON,
study file and commands; stores, checkpoints and predictions stay out of git). Keep it outside
the repository, or as docs/findings/<name>-store/, which .gitignore leaves out.

Copies a consistent snapshot of ``transfuse.db`` (SQLite's backup API, safe while a study is
still writing), each of the study's runs' ``test_predictions.npz`` (DeLong in the report needs
them), the ``best.pt`` of its pretraining runs (the sources of its pretrained cells) and the
``pretrain/<name>/`` folders of its ``ssl:``/``med3d:`` sources. Other checkpoints are left out.
``DEST`` is then a workspace: ``transfuse report -w DEST --study STUDY`` rebuilds the report,
and copying it to a workspace and rerunning ``transfuse study run ... --until-decided`` resumes
the study (finished runs are kept, the rest are trained).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from transfuse.errors import check_name


def main(ws: str, study: str, dest: str) -> None:
    src, out = Path(ws), Path(dest)
    # A store in the repository would be committed with the next `git add -A` (98 MB of them
    # were, until issue 28): refuse a destination git would track, before writing anything.
    probe = next(p for p in (out, *out.absolute().parents) if p.is_dir())
    inside = subprocess.run(["git", "-C", str(probe), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, text=True).stdout.strip() == "true"
    ignored = subprocess.run(["git", "-C", str(probe), "check-ignore", "-q", str(out.absolute()) + "/"],
                             capture_output=True).returncode == 0
    if inside and not ignored:
        sys.exit(f"{out}: inside a git work tree and not ignored; snapshot outside the repository "
                 "or to docs/findings/<name>-store/")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    tmp = out / "transfuse.db.tmp"
    with sqlite3.connect(src / "transfuse.db") as a, sqlite3.connect(tmp) as b:
        a.backup(b)
    tmp.replace(out / "transfuse.db")
    con = sqlite3.connect(out / "transfuse.db")
    rows = con.execute("SELECT run_id, study FROM runs WHERE status = 'finished' AND study IN (?, ?)",
                       (study, f"{study}-pretrain")).fetchall()
    con.close()
    n = 0
    for rid, st in rows:
        keep = ["test_predictions.npz"] + (["best.pt"] if st.endswith("-pretrain") else [])
        for f in keep:
            p = src / "runs" / rid / f
            if p.is_file():
                (out / "runs" / rid).mkdir(exist_ok=True)
                shutil.copy2(p, out / "runs" / rid / f)
                n += 1
    # The study's ssl:/med3d: sources (their pretrain.json feeds the report, their encoder.pt a
    # resumed study): every finished pretraining folder the runs name.
    con = sqlite3.connect(out / "transfuse.db")
    specs = [r[0] for r in con.execute("SELECT spec FROM runs WHERE study IN (?, ?)",
                                       (study, f"{study}-pretrain"))]
    con.close()
    sources = {json.loads(s)["init"].get("source") or "" for s in specs}
    for name in sorted(s.split(":", 1)[1] for s in sources if s.startswith(("ssl:", "med3d:"))):
        folder = src / "pretrain" / check_name(name, field="source")
        if (folder / "pretrain.json").is_file():
            shutil.copytree(folder, out / "pretrain" / name, dirs_exist_ok=True)
            n += len([f for f in folder.iterdir() if f.is_file()])
    print(f"{dest}: {len(rows)} finished runs, {n} files")


if __name__ == "__main__":
    main(*sys.argv[1:4])
