"""Small models the tests diagnose: faulty ones that must fail, clean ones that must pass."""
