#!/usr/bin/env python3
"""Pack the push-to-k8s binary into an OCI image, without Docker (issue 18).

    image/build-image.py [--binary target/release/push-to-k8s] [--name push-to-k8s:0.1.0]
                         [--out target/image]

Writes an OCI image layout (directory OUT/oci) and the same layout as one tar
(OUT/push-to-k8s.oci.tar), and prints the image's manifest digest. The image holds:

- the binary at /usr/local/bin/push-to-k8s (the entrypoint);
- exactly the shared libraries it loads (as `ldd` lists them), at the paths it loads them from;
- the machine's CA certificates (/etc/ssl/certs/ca-certificates.crt);
- /etc/passwd and /etc/group with the non-root user 65532 (`nonroot`), the image's user;
- an empty /tmp (mode 1777); no shell, no package manager.

Reproducible: the same binary, libraries and certificates give the same digest (file times,
owners and order are fixed, gzip carries no time stamp, the config has a fixed creation date).

Load it into containerd with `ctr -n k8s.io images import OUT/push-to-k8s.oci.tar`; push it to a
registry with any OCI tool that reads an OCI layout (README "Container image").
Only Python's standard library is used.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

USER = 65532
EPOCH = "1970-01-01T00:00:00Z"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def shared_libraries(binary):
    """Absolute paths the dynamic loader opens for BINARY, as ldd prints them."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in (out.stdout + out.stderr):
            return []
        sys.exit(f"build-image: ldd {binary} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append(m.group(1))
        elif "=> not found" in line:
            sys.exit(f"build-image: {binary} needs a library the machine lacks: {line}")
    return sorted(set(libs))


def add_dir(tar, path, mode=0o755):
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def add_file(tar, path, data, mode=0o644):
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def layer(binary, libs):
    """The one layer, as an uncompressed tar (bytes)."""
    files = {"usr/local/bin/push-to-k8s": (open(binary, "rb").read(), 0o755)}
    for lib in libs:
        # The real file's bytes at the path the loader asks for (symlinks resolved).
        files[lib.lstrip("/")] = (open(os.path.realpath(lib), "rb").read(), 0o755)
    files[CA_BUNDLE.lstrip("/")] = (open(CA_BUNDLE, "rb").read(), 0o644)
    files["etc/passwd"] = (f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/sbin/nologin\n".encode(), 0o644)
    files["etc/group"] = (f"root:x:0:\nnonroot:x:{USER}:\n".encode(), 0o644)
    dirs = {"tmp"}
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs | set(files)):
            if d in files:
                add_file(tar, d, *files[d])
            else:
                add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
    return buf.getvalue()


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--binary", default="target/release/push-to-k8s")
    ap.add_argument("--name", default="push-to-k8s:0.1.0", help="REPOSITORY:TAG the layout names")
    ap.add_argument("--out", default="target/image")
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"build-image: no executable at {a.binary} (cargo build --release first)")
    repo, _, tag = a.name.rpartition(":")
    if not repo or "/" in tag:
        sys.exit(f"build-image: --name must be REPOSITORY:TAG, got {a.name}")

    raw = layer(a.binary, shared_libraries(a.binary))
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(raw)

    oci = os.path.join(a.out, "oci")
    shutil.rmtree(oci, ignore_errors=True)
    blobs = os.path.join(oci, "blobs", "sha256")
    os.makedirs(blobs)
    layer_desc = dict(blob(blobs, gz.getvalue()), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "created": EPOCH,
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["/usr/local/bin/push-to-k8s"],
            "Env": ["PATH=/usr/local/bin", f"SSL_CERT_FILE={CA_BUNDLE}"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": EPOCH, "created_by": "image/build-image.py"}],
    }
    config_desc = dict(blob(blobs, canonical(config)), mediaType="application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = dict(blob(blobs, canonical(manifest)), mediaType="application/vnd.oci.image.manifest.v1+json")
    first = repo.split("/")[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        full = repo
    elif "/" in repo:
        full = f"docker.io/{repo}"
    else:
        full = f"docker.io/library/{repo}"
    manifest_desc["annotations"] = {
        "io.containerd.image.name": f"{full}:{tag}",
        "org.opencontainers.image.ref.name": tag,
    }
    with open(os.path.join(oci, "index.json"), "wb") as f:
        f.write(canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}))
    with open(os.path.join(oci, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))

    archive = os.path.join(a.out, "push-to-k8s.oci.tar")
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, names in os.walk(oci):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                info = tarfile.TarInfo(os.path.relpath(path, oci))
                info.size = os.path.getsize(path)
                info.mode = 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
