"""rosteradmin tests."""
