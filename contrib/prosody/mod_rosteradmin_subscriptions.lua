-- mod_rosteradmin_subscriptions: the web application owns this host's rosters,
-- so presence subscriptions cannot be changed by clients or by other servers.
--
-- rosteradmin refuses clients' roster sets, but subscription presences are not
-- roster iqs: Prosody's mod_presence applies them to the stored rosters itself
-- (RFC 6121 section 3), so a client could add, remove or half-remove contacts
-- behind the web application's back.  This module stops the four subscription
-- presence types (subscribe, subscribed, unsubscribe, unsubscribed) on this host,
-- in both directions, before mod_presence sees them:
--
--   * sent by a local user's client: dropped, and the client gets a
--     policy-violation error saying why;
--   * sent to a local user from anywhere else: dropped, and the sender gets
--     the same error.
--
-- Available, unavailable, probe and error presences pass untouched, so presence
-- keeps flowing between the contacts the web application lists.
--
-- Load it on the VirtualHost whose rosters rosteradmin manages:
--     modules_enabled = { "privilege"; "delegation"; "rosteradmin_subscriptions" }
-- with this file in one of Prosody's plugin_paths (Debian's configuration lists
-- /usr/local/lib/prosody/modules).

local st = require "util.stanza";

local blocked_types = {
	subscribe = true;
	subscribed = true;
	unsubscribe = true;
	unsubscribed = true;
};

local refusal_text = module:get_option_string("rosteradmin_subscriptions_text",
	"Contacts on this server are managed by its web application; subscriptions cannot be changed here.");

-- Higher than mod_presence's handlers (priority 0): we decide first.
local priority = 100;

local function refuse(event, direction)
	local stanza = event.stanza;
	if not blocked_types[stanza.attr.type] then
		return nil; -- not a subscription: mod_presence handles it
	end
	module:log("debug", "refused %s %s presence from %s to %s", direction, stanza.attr.type,
		tostring(stanza.attr.from), tostring(stanza.attr.to));
	if stanza.attr.from and stanza.attr.from ~= "" then
		event.origin.send(st.error_reply(stanza, "cancel", "policy-violation", refusal_text));
	end
	return true; -- handled: mod_presence never applies it
end

local function outbound(event) return refuse(event, "outbound"); end
local function inbound(event) return refuse(event, "inbound"); end

for _, target in ipairs({ "bare", "full", "host" }) do
	module:hook("pre-presence/" .. target, outbound, priority);
	module:hook("presence/" .. target, inbound, priority);
end
