//! The image script (image/build-image.py, issue 18): two builds of the same binary give the
//! same digest, and the image holds what the README says and nothing runnable besides the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn build(out: &Path) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = Command::new("python3")
        .arg(format!("{root}/image/build-image.py"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_push-to-k8s"))
        .arg("--name")
        .arg("push-to-k8s:test")
        .arg("--out")
        .arg(out)
        .output()
        .expect("python3 runs (the image script needs it)");
    assert!(
        o.status.success(),
        "build-image.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("push-to-k8s-image-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn blob(oci: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

#[test]
fn two_builds_of_the_same_binary_have_the_same_digest_and_the_documented_layout() {
    let (a, b) = (scratch("a"), scratch("b"));
    let da = build(&a);
    let db = build(&b);
    assert!(
        da.starts_with("sha256:") && da.len() == 71,
        "digest printed: {da}"
    );
    assert_eq!(da, db, "two builds of one binary differ");
    assert_eq!(
        std::fs::read(a.join("push-to-k8s.oci.tar")).unwrap(),
        std::fs::read(b.join("push-to-k8s.oci.tar")).unwrap(),
        "the two archives differ byte for byte"
    );

    let oci = a.join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], da.as_str());
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        "docker.io/library/push-to-k8s:test"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&oci, &da)).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(&oci, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/push-to-k8s"])
    );

    // The layer's file list, read with the system's tar (gzip).
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let path = oci
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let o = Command::new("tar").arg("tzvf").arg(&path).output().unwrap();
    assert!(o.status.success());
    let listing = String::from_utf8(o.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().trim_end_matches('/'))
        .collect();
    for want in [
        "usr/local/bin/push-to-k8s",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "tmp",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the layer: {names:?}"
        );
    }
    // Every library the binary loads is in it, and no shell is.
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_push-to-k8s"))
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            assert!(
                names.contains(&p.trim_start_matches('/')),
                "library {p} missing from the layer"
            );
        }
    }
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("bin/sh") || n.ends_with("bin/bash")),
        "a shell in the image: {names:?}"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
