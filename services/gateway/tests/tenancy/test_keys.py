"""API keys from a file: hashing, authentication, admin access and the hashkey CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.errors import Forbidden, Unauthorized
from gateway.tenancy import hashkey
from gateway.tenancy.keys import (
    AuthConfig,
    Authenticator,
    FileKeyStore,
    TenantsFileError,
    hash_key,
)

ACME_KEY = "sk-acme-0123456789"
ACME_OLD_KEY = "sk-acme-old"
OPS_KEY = "sk-ops-key"
ADMIN_KEY = "sk-admin-secret"
DUP = hash_key("k")


def keys_file(tmp_path: Path, tenants: list[dict[str, object]], suffix: str = ".json") -> Path:
    path = tmp_path / f"keys{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"tenants": tenants}))
    else:
        import yaml

        path.write_text(yaml.safe_dump({"tenants": tenants}))
    return path


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(
        keys_file(
            tmp_path,
            [
                {
                    "name": "acme",
                    "key_sha256": [hash_key(ACME_KEY), hash_key(ACME_OLD_KEY)],
                    "requests_per_s": 5,
                    "burst": 10,
                    "max_streams": 4,
                },
                {"name": "ops", "key_sha256": hash_key(OPS_KEY).upper(), "admin": True},
            ],
        )
    )


def auth(store: FileKeyStore | None, *, enabled: bool = True, admin: str = "") -> Authenticator:
    config = AuthConfig(enabled=enabled, admin_key_sha256=hash_key(admin) if admin else "")
    return Authenticator(config, store)


def test_hash_key_is_the_sha256_hex_digest() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


async def test_a_listed_key_authenticates_as_its_tenant_with_its_limits(
    store: FileKeyStore,
) -> None:
    tenant = await auth(store).authenticate(f"Bearer {ACME_KEY}")
    assert (tenant.name, tenant.requests_per_s, tenant.burst, tenant.max_streams) == (
        "acme",
        5,
        10,
        4,
    )
    assert not tenant.admin
    assert (await auth(store).authenticate(f"bearer  {ACME_OLD_KEY} ")).name == "acme"
    ops = await auth(store).authenticate(f"Bearer {OPS_KEY}")
    assert ops.name == "ops" and ops.admin and not ops.limited


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (None, "didn't provide an API key"),
        ("", "didn't provide an API key"),
        (f"Basic {ACME_KEY}", "Malformed"),
        ("Bearer", "Malformed"),
        ("Bearer sk-acme-0123456788", "Incorrect API key"),
        (f"Bearer {hash_key(ACME_KEY)}", "Incorrect API key"),  # the digest is not a key
        ("Bearer " + "x" * 5000, "Malformed"),
    ],
)
async def test_a_missing_or_wrong_key_is_401_and_never_echoed(
    store: FileKeyStore, header: str | None, says: str
) -> None:
    with pytest.raises(Unauthorized) as denied:
        await auth(store).authenticate(header)
    assert denied.value.status == 401
    assert says in denied.value.message
    assert "sk-" not in denied.value.message
    assert denied.value.payload()["error"]["type"] == "authentication_error"


async def test_with_auth_off_every_request_is_the_default_tenant(store: FileKeyStore) -> None:
    off = Authenticator(AuthConfig(enabled=False, default_tenant="local"), store)
    for header in (None, "Bearer nonsense", f"Bearer {ACME_KEY}"):
        tenant = await off.authenticate(header)
        assert tenant.name == "local" and not tenant.limited


async def test_with_auth_on_and_no_store_every_key_is_refused() -> None:
    with pytest.raises(Unauthorized):
        await auth(None).authenticate(f"Bearer {ACME_KEY}")


async def test_yaml_keys_files_work_too(tmp_path: Path) -> None:
    path = keys_file(tmp_path, [{"name": "y", "key_sha256": [hash_key("k")]}], ".yaml")
    assert (await auth(FileKeyStore(path)).authenticate("Bearer k")).name == "y"


def test_a_plaintext_key_in_the_file_is_rejected_without_repeating_it(tmp_path: Path) -> None:
    path = keys_file(tmp_path, [{"name": "acme", "key_sha256": [ACME_KEY]}])
    with pytest.raises(TenantsFileError) as bad:
        FileKeyStore(path)
    assert "hashkey" in str(bad.value)
    assert ACME_KEY not in str(bad.value)


@pytest.mark.parametrize(
    ("tenants", "says"),
    [
        ([{"name": "a", "key_sha256": [DUP]}, {"name": "b", "key_sha256": [DUP]}], "listed for"),
        ([{"name": "a"}, {"name": "a"}], "twice"),
        ([{"name": "bad name"}], "name"),
        ([{"name": "a", "requests_per_s": 0}], "requests_per_s"),
        ([{"name": "a", "max_streams": -1}], "max_streams"),
        ([{"name": "a", "rps": 3}], "rps"),
    ],
)  # fmt: skip
def test_mistakes_in_the_keys_file_stop_the_start(
    tmp_path: Path, tenants: list[dict[str, object]], says: str
) -> None:
    with pytest.raises(TenantsFileError, match=says):
        FileKeyStore(keys_file(tmp_path, tenants))


def test_a_file_without_a_tenants_list_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("[]")
    with pytest.raises(TenantsFileError, match="tenants"):
        FileKeyStore(path)


def test_only_the_configured_admin_key_is_admin(store: FileKeyStore) -> None:
    authenticator = auth(store, admin=ADMIN_KEY)
    assert authenticator.is_admin(f"Bearer {ADMIN_KEY}")
    assert not authenticator.is_admin(f"Bearer {ADMIN_KEY}x")
    assert not authenticator.is_admin(f"Bearer {ACME_KEY}")
    assert not authenticator.is_admin(None)
    assert not auth(store).is_admin(f"Bearer {ADMIN_KEY}")


def test_the_admin_key_must_be_configured_as_a_digest() -> None:
    with pytest.raises(ValueError, match="digest"):
        Authenticator(AuthConfig(admin_key_sha256=ADMIN_KEY), None)


async def test_admin_endpoints_take_the_admin_key_or_an_admin_tenants_key(
    store: FileKeyStore,
) -> None:
    authenticator = auth(store, admin=ADMIN_KEY)
    await authenticator.authorize_admin(f"Bearer {ADMIN_KEY}")
    await authenticator.authorize_admin(f"Bearer {OPS_KEY}")
    with pytest.raises(Forbidden):
        await authenticator.authorize_admin(f"Bearer {ACME_KEY}")
    with pytest.raises(Unauthorized):
        await authenticator.authorize_admin("Bearer wrong")
    with pytest.raises(Unauthorized):
        await authenticator.authorize_admin(None)


async def test_admin_endpoints_are_forbidden_when_nothing_can_unlock_them() -> None:
    with pytest.raises(Forbidden, match="disabled"):
        await auth(None, enabled=False).authorize_admin(f"Bearer {ADMIN_KEY}")
    with pytest.raises(Unauthorized):
        await auth(None, enabled=False, admin=ADMIN_KEY).authorize_admin("Bearer wrong")


def test_hashkey_cli_prints_the_digest_to_put_in_the_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hashkey.main([ACME_KEY]) == 0
    assert capsys.readouterr().out == hash_key(ACME_KEY) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(ACME_KEY + "\n"))
    hashkey.main(["-"])
    assert capsys.readouterr().out == hash_key(ACME_KEY) + "\n"


async def test_hashkey_cli_makes_new_keys_that_authenticate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hashkey.main(["--new"])
    key, digest = capsys.readouterr().out.split()
    hashkey.main(["--new"])
    other, _ = capsys.readouterr().out.split()
    assert key != other and len(key) > 40
    store = FileKeyStore(keys_file(tmp_path, [{"name": "new", "key_sha256": [digest]}]))
    assert (await auth(store).authenticate(f"Bearer {key}")).name == "new"
