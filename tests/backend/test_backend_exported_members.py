"""`backend`'s public API is what `__all__` says, sorted, and every name resolves."""

import backend


def test_all_is_sorted_and_resolves():
    assert backend.__all__ == sorted(backend.__all__)
    for name in backend.__all__:
        assert hasattr(backend, name), name


def test_pinned_members():
    assert set(backend.__all__) == {
        "AuthenticationRequired",
        "Conflict",
        "InvalidInput",
        "NotFound",
        "PayloadTooLarge",
        "PermissionDenied",
        "Settings",
        "SiteError",
        "TooManyAttempts",
        "__version__",
        "create_app",
        "downgrade",
        "upgrade",
    }
