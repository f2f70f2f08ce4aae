""".expert packages: written and installed, signatures verified, and hostile or tampered
packages refused with nothing written."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save as save_safetensors

from server.manifest import package as pkg
from server.manifest.package import PackageError, pack, unpack

pytestmark = pytest.mark.unit

EXPERT_BIN = Path(sys.executable).parent / "expert"
_KEY = "base_model.model.model.layers.0.self_attn.q_proj"
WEIGHTS = save_safetensors(
    {f"{_KEY}.lora_A.weight": np.ones((4, 8), np.float32), f"{_KEY}.lora_B.weight": np.ones((8, 4), np.float32)}
)


def _expert(root: Path, name: str = "pkg-expert") -> Path:
    folder = root / name
    (folder / "soft_prompts").mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )
    (folder / "adapter_model.safetensors").write_bytes(WEIGHTS)
    (folder / "soft_prompts" / "s.safetensors").write_bytes(b"sp")
    (folder / "grammar.gbnf").write_text('root ::= "yes" | "no"\n')
    (folder / "README.md").write_text("readme\n")
    (folder / "LICENSE").write_text("license\n")
    (folder / "datasets").mkdir()
    (folder / "datasets" / "train.jsonl").write_text("{}\n")  # not packaged
    manifest = {
        "name": name,
        "version": "1.2.0",
        "schema_version": "2.0",
        "capabilities": ["format:json"],
        "base_models": [
            {
                "name": "F:/Node/hivellm/expert/models/Qwen3-0.6B",
                "prompt_template": "qwen3",
                "adapters": [
                    {
                        "type": "lora",
                        "r": 4,
                        "alpha": 8,
                        "target_modules": ["q_proj"],
                        "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
                        "size_bytes": len(WEIGHTS),
                    }
                ],
            }
        ],
        "training": {"decoding": {"use_grammar": True, "grammar_file": "grammar.gbnf"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, pkg.public_key_text(key)


def _members(package: Path) -> dict[str, bytes]:
    with tarfile.open(package) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def _write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _repack(package: Path, out: Path, change: dict[str, bytes]) -> Path:
    members = _members(package) | change
    return _write_tar(out, [_file(n, d) for n, d in members.items()])


def test_pack_layout_and_name(tmp_path: Path):
    folder = _expert(tmp_path / "src")
    package = pack(folder, tmp_path / "out")
    assert package.name == "pkg-expert-Qwen3-0.6B.v1.2.0.expert"
    members = _members(package)
    assert sorted(members) == [
        "LICENSE",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "grammar.gbnf",
        "manifest.json",
    ]
    sidecar = Path(str(package) + ".sha256").read_text()
    assert sidecar == f"{hashlib.sha256(package.read_bytes()).hexdigest()}  {package.name}\n"


def test_unsigned_package_installs(tmp_path: Path):
    folder = _expert(tmp_path / "src")
    package = pack(folder, tmp_path / "out")
    result = unpack(package, tmp_path / "experts")
    assert result.path == tmp_path / "experts" / "pkg-expert" and not result.signed
    assert (result.path / "adapter_model.safetensors").read_bytes() == WEIGHTS
    assert json.loads((result.path / "manifest.json").read_text())["version"] == "1.2.0"
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == ["pkg-expert"]
    # a second install of the same name is refused and leaves the first alone
    with pytest.raises(PackageError, match="exists"):
        unpack(package, tmp_path / "experts")
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == ["pkg-expert"]


def test_signed_package_verifies_and_trusted_keys_apply(tmp_path: Path):
    key, public = _key()
    package = pack(_expert(tmp_path / "src"), tmp_path / "out", key)
    integrity = json.loads(_members(package)["manifest.json"])["integrity"]
    assert integrity["public_key"].startswith("ed25519:") and integrity["signature_algorithm"] == "ed25519"
    assert set(integrity["files"]) == {
        "LICENSE",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "grammar.gbnf",
    }
    result = unpack(package, tmp_path / "a", trusted_keys=[public])
    assert result.signed and result.key == public
    _, other = _key()
    with pytest.raises(PackageError, match="not among the trusted keys"):
        unpack(package, tmp_path / "b", trusted_keys=[other])
    assert list((tmp_path / "b").iterdir()) == []
    unsigned = pack(_expert(tmp_path / "src2"), tmp_path / "out2")
    with pytest.raises(PackageError, match="unsigned package"):
        unpack(unsigned, tmp_path / "c", trusted_keys=[public])
    assert list((tmp_path / "c").iterdir()) == []


def test_signature_covers_the_manifest_and_the_key_prefix_is_stripped(tmp_path: Path):
    key, public = _key()
    package = pack(_expert(tmp_path / "src"), tmp_path / "out", key)
    raw = json.loads(_members(package)["manifest.json"])
    hashes = dict(raw["integrity"]["files"])
    hashes["manifest.json"] = hashlib.sha256(pkg.canonical_manifest(raw)).hexdigest()
    message = "\n".join(sorted(f"{p}:{h}" for p, h in hashes.items())).encode()
    assert pkg.verify_signature(public, raw["integrity"]["signature"], message)
    assert pkg.verify_signature(public.removeprefix("ed25519:"), raw["integrity"]["signature"], message)
    assert not pkg.verify_signature(public, raw["integrity"]["signature"], message + b"\n")


def _refused(package: Path, experts: Path, match: str, **kw) -> None:
    with pytest.raises(PackageError, match=match):
        unpack(package, experts, **kw)
    assert list(experts.iterdir()) == [], "nothing may be written"


def test_tampered_packages_refused(tmp_path: Path):
    key, public = _key()
    package = pack(_expert(tmp_path / "src"), tmp_path / "out", key)
    experts = tmp_path / "experts"
    # a changed adapter file: its hash no longer matches integrity.files
    bad = _repack(package, tmp_path / "t1.expert", {"adapter_model.safetensors": b"evil" + WEIGHTS[4:]})
    _refused(bad, experts, "sha256 of adapter_model.safetensors does not match")
    # an extra file the integrity block does not list
    bad = _repack(package, tmp_path / "t2.expert", {"extra.py": b"print(1)"})
    _refused(bad, experts, "not listed in integrity.files: extra.py")
    # a changed manifest (hashes intact): the signature no longer verifies
    raw = json.loads(_members(package)["manifest.json"])
    raw["description"] = "changed"
    bad = _repack(package, tmp_path / "t3.expert", {"manifest.json": json.dumps(raw).encode()})
    _refused(bad, experts, "signature does not verify")
    # a signature from another key under this key's name
    other, _ = _key()
    raw = json.loads(_members(package)["manifest.json"])
    raw["integrity"]["signature"] = base64.b64encode(other.sign(b"x")).decode()
    bad = _repack(package, tmp_path / "t4.expert", {"manifest.json": json.dumps(raw).encode()})
    _refused(bad, experts, "signature does not verify")
    # a package whose sidecar does not match
    copy = tmp_path / "t5.expert"
    copy.write_bytes(package.read_bytes() + b"\0")
    Path(str(copy) + ".sha256").write_text(Path(str(package) + ".sha256").read_text())
    _refused(copy, experts, "does not match t5.expert.sha256")
    # unsigned, but the manifest's adapter sha256 disagrees with the file
    unsigned = pack(_expert(tmp_path / "src2"), tmp_path / "out2")
    bad = _repack(unsigned, tmp_path / "t6.expert", {"adapter_model.safetensors": b"other"})
    _refused(bad, experts, "adapters\\[0\\].sha256 does not match")
    assert public  # the trusted key was never needed to refuse these


def _hostile(tmp_path: Path, name: str, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    manifest = (tmp_path / "src" / "pkg-expert" / "manifest.json").read_bytes()
    return _write_tar(tmp_path / f"{name}.expert", [_file("manifest.json", manifest), *entries])


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([_file("/etc/evil", b"x")], "absolute path"),
        ([_file("../evil", b"x")], "'..'"),
        ([_file("soft_prompts/../../evil", b"x")], "'..'"),
        ([_file("C:/evil", b"x")], "absolute path"),
        ([_file("a\\..\\evil", b"x")], "backslash"),
        ([_link("adapter_model.safetensors", "/etc/passwd", tarfile.SYMTYPE)], "a link"),
        ([_link("adapter_model.safetensors", "manifest.json", tarfile.LNKTYPE)], "a link"),
        ([_link("fifo", "", tarfile.FIFOTYPE)], "special file"),
        ([_file("manifest.json", b"{}")], "appears twice"),
        ([_file("a/b/c/d", b"x")], "deeper than"),
    ],
)
def test_hostile_entries_refused(tmp_path: Path, entries, match):
    _expert(tmp_path / "src")
    experts = tmp_path / "experts"
    experts.mkdir()
    _refused(_hostile(tmp_path, "h", entries), experts, match)
    assert not (tmp_path / "evil").exists()


def test_limits_refused(tmp_path: Path):
    _expert(tmp_path / "src")
    experts = tmp_path / "experts"
    experts.mkdir()
    many = _hostile(tmp_path, "many", [_file(f"f{i}", b"x") for i in range(10)])
    _refused(many, experts, "more than 5 files", max_files=5)
    big = _hostile(tmp_path, "big", [_file("big.bin", b"x" * 5000)])
    _refused(big, experts, "over the limit of 4096", max_file_bytes=4096)
    total = _hostile(tmp_path, "total", [_file(f"p{i}", b"x" * 3000) for i in range(4)])
    _refused(total, experts, "more than 10000 bytes", max_total_bytes=10_000)
    # a header that lies about the size: tar refuses the short read, nothing is kept
    not_tar = tmp_path / "junk.expert"
    not_tar.write_bytes(os.urandom(2000))
    _refused(not_tar, experts, "not a tar.gz package|damaged archive")


def test_cli_package_and_install(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    seed_file = tmp_path / "key.b64"
    from cryptography.hazmat.primitives import serialization

    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    seed_file.write_text(base64.b64encode(seed).decode())
    folder = _expert(tmp_path / "src")
    out = subprocess.run(
        [str(EXPERT_BIN), "package", str(folder), "--out", str(tmp_path / "out"), "--sign-key", str(seed_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    package = Path(out.stdout.splitlines()[0])
    public = pkg.public_key_text(key)
    ok = subprocess.run(
        [str(EXPERT_BIN), "install", str(package), "--experts-dir", str(tmp_path / "e"), "--trusted-key", public],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"installed pkg-expert 1.2.0 into {tmp_path / 'e' / 'pkg-expert'}" in ok.stdout
    assert "signed by ed25519:" in ok.stdout
    bad = _repack(package, tmp_path / "bad.expert", {"../escape": b"x"})
    refused = subprocess.run(
        [str(EXPERT_BIN), "install", str(bad), "--experts-dir", str(tmp_path / "f")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "refused, nothing installed" in refused.stderr
    assert list((tmp_path / "f").iterdir()) == []
