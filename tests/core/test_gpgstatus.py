"""What a gpg run's status lines must say, checked on lines as gpg writes them."""

from __future__ import annotations

import pytest

from gateway.core.errors import CryptoFailed, KeyProblem, PassphraseWrong, Rejected
from gateway.core.gpgstatus import Run, check_opened, check_sealed, check_signed

US = "A" * 40
THEM = "B" * 40
OTHER = "C" * 40


def run(*lines: str, returncode: int = 0) -> Run:
    return Run(returncode, "".join(f"[GNUPG:] {line}\n" for line in lines))


def sealed(signer: str = US, digest: str = "8", cipher: str = "9") -> Run:
    return run(f"KEY_CONSIDERED {THEM} 0", f"KEY_CONSIDERED {US} 2", "BEGIN_SIGNING H8",
               f"BEGIN_ENCRYPTION 2 {cipher}", f"SIG_CREATED S 22 {digest} 00 1796536765 {signer}",
               "END_ENCRYPTION")  # fmt: skip


def test_a_seal_by_our_key_with_aes256_to_the_partner_passes() -> None:
    check_sealed(sealed(), US, THEM)


@pytest.mark.parametrize(
    "result",
    [sealed(signer=OTHER), sealed(digest="2"), sealed(cipher="7")],
    ids=["signed by another key", "SHA-1", "AES-128"],
)
def test_a_seal_that_is_not_exactly_what_the_spec_says_is_refused(result: Run) -> None:
    """gpg under `--default-key` once signed with another secret key and exited 0."""
    with pytest.raises(CryptoFailed, match=f"did not sign with {US} and encrypt to {THEM}"):
        check_sealed(result, US, THEM)


def test_a_signer_gpg_refuses_is_named_before_any_recipient() -> None:
    refused = run(f"INV_SGNR 9 {US}", "FAILURE sign-encrypt 17", returncode=2)

    with pytest.raises(KeyProblem, match=f"will not sign with the gateway's key {US}"):
        check_sealed(refused, US, THEM)


def test_a_wrong_passphrase_is_the_hosts_trouble_not_a_refusal() -> None:
    wrong = run("FAILURE sign 11", returncode=2)  # libgpg-error 11: bad passphrase

    with pytest.raises(PassphraseWrong):
        check_signed(wrong, US)
    with pytest.raises(PassphraseWrong):
        check_opened(run("DECRYPTION_FAILED", "FAILURE decrypt 67108875", returncode=2),
                     frozenset({THEM}), encrypted=True)  # fmt: skip


def test_an_opened_message_names_its_one_pinned_signer() -> None:
    good = ("GOODSIG 1 them", f"VALIDSIG {THEM[:8]} 2026-12-06 1 0 4 0 22 8 00 {THEM}",
            "DECRYPTION_OKAY", "END_DECRYPTION")  # fmt: skip

    assert check_opened(run(*good), frozenset({THEM}), encrypted=True) == THEM
    with pytest.raises(Rejected, match="more than one signature"):
        check_opened(run(*good, good[1]), frozenset({THEM}), encrypted=True)
    with pytest.raises(Rejected, match="not the partner's pinned key"):
        check_opened(run(*good), frozenset({OTHER}), encrypted=True)
