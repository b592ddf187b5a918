// Site-specific settings for index.html: replace them with your own.
// Prosody serves WebSocket at /xmpp-websocket on its HTTP port (5280 by
// default, 5281 with TLS); a reverse proxy usually puts it next to this page.
window.converseSiteSettings = {
    websocket_url: "wss://chat.example.org/xmpp-websocket",
    // Users log in with their username alone, and only on this domain.
    locked_domain: "example.org",
};
