"""Integration tests against a real Prosody, web app stub and XMPP clients."""
