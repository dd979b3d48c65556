"""`tidings keys generate` and `tidings keys show`, driven through click's CliRunner."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.cli import main
from tidings.webpush import VapidKey, b64url_decode, b64url_encode


def test_generate_writes_a_0600_pem_and_prints_the_public_key(tmp_path: Path) -> None:
    out = tmp_path / "vapid.pem"
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pem = out.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    public = result.stdout.strip()
    assert len(b64url_decode(public)) == 65
    assert VapidKey.from_pem(pem).public_key_b64 == public


def test_show_prints_the_same_public_key(tmp_path: Path) -> None:
    out = tmp_path / "vapid.pem"
    runner = CliRunner()
    generated = runner.invoke(main, ["keys", "generate", "-o", str(out)])
    shown = runner.invoke(main, ["keys", "show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.strip() == generated.stdout.strip()


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "vapid.pem"
    out.write_text("precious")
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)])
    assert result.exit_code != 0
    assert "already exists" in result.output and "--force" in result.output
    assert out.read_text() == "precious"


def test_force_replaces_with_a_0600_file(tmp_path: Path) -> None:
    out = tmp_path / "vapid.pem"
    out.write_text("old")
    out.chmod(0o644)
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert VapidKey.from_file(out).public_key_b64 == result.stdout.strip()
    assert [p.name for p in tmp_path.iterdir()] == ["vapid.pem"]  # no temp file left


def test_generate_without_out_prints_pem_on_stdout_and_key_on_stderr() -> None:
    result = CliRunner().invoke(main, ["keys", "generate"])
    assert result.exit_code == 0
    key = VapidKey.from_pem(result.stdout)
    assert key.public_key_b64 in result.stderr
    assert key.public_key_b64 not in result.stdout


def test_show_reads_py_vapid_and_web_push_formats(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    expected = VapidKey(private).public_key_b64
    files = {
        "sec1.pem": private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        "der.b64": b64url_encode(
            private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ).encode(),
        "raw.b64": (
            b64url_encode(private.private_numbers().private_value.to_bytes(32, "big")) + "\n"
        ).encode(),
    }
    runner = CliRunner()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        result = runner.invoke(main, ["keys", "show", str(tmp_path / name)])
        assert result.exit_code == 0, (name, result.output)
        assert result.stdout.strip() == expected, name


def test_show_explains_bad_files(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["keys", "show", str(tmp_path / "nope.pem")])
    assert missing.exit_code != 0 and "cannot read" in missing.output
    (tmp_path / "junk.pem").write_text("not a key at all")
    junk = runner.invoke(main, ["keys", "show", str(tmp_path / "junk.pem")])
    assert junk.exit_code != 0 and "Error" in junk.output
    assert "Traceback" not in junk.output


def test_help_documents_the_output_choice() -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "--help"])
    assert "0600" in result.output and "stderr" in result.output
