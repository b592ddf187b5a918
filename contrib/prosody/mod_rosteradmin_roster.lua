-- mod_rosteradmin_roster: write many roster items with one save.
--
-- mod_privilege (XEP-0356) takes one item per roster set and saves the whole
-- roster after each: writing an 8,000-contact roster costs Prosody 8,000 full
-- saves, minutes of CPU during which every other user waits.  This module
-- lets the privileged entity (rosteradmin) send many items in one iq:
--
--   <iq type='set' from='roster.example.org' to='alice@example.org' id='...'>
--     <query xmlns='urn:x-rosteradmin:roster:0'>
--       <item jid='bob@example.org' name='Bob' subscription='both'><group>Friends</group></item>
--       <item jid='carol@example.org' subscription='remove'/>
--     </query>
--   </iq>
--
-- Items are applied in order (subscription 'both', or 'remove'), then the
-- roster is saved once and the result is sent.  Only an entity granted roster
-- 'set' or 'both' by mod_privilege's privileged_entities may use it; anyone
-- else gets forbidden.  Nothing is pushed to the user's clients: rosteradmin
-- pushes the changes itself.
--
-- Load it on the VirtualHost whose rosters rosteradmin manages, next to
-- mod_privilege:
--     modules_enabled = { "privilege"; "delegation"; "rosteradmin_roster"; ... }
-- rosteradmin uses it when the server answers it, and writes one item per
-- privileged set otherwise.
--
-- It also reads the privileged entity's component stream in chunks of
-- rosteradmin_component_read_size bytes (default 64 KiB) instead of the 4 KiB
-- every listener gets (network_default_read_size): every user's roster
-- answers come over that one stream, and with 4 KiB per turn of the network
-- loop it waited behind each of hundreds of client connections for every
-- 5 KB answer (docs/benchmarks.md, "Where the server's time goes").  Only the
-- read size changes; component_stanza_size_limit applies as before.

local st = require "util.stanza";
local jid = require "util.jid";
local rostermanager = require "core.rostermanager";
local usermanager = require "core.usermanager";

local xmlns = "urn:x-rosteradmin:roster:0";
local granted = { set = true; both = true };
local read_size = module:get_option_number("rosteradmin_component_read_size", 64 * 1024);

module:add_feature(xmlns);

local function is_privileged(session)
	local privileges = session.privileges and session.privileges[module.host];
	return privileges ~= nil and granted[privileges.roster] == true;
end

local function item_of(item)
	local entry = { subscription = "both"; groups = {} };
	local name = item.attr.name;
	if name and name ~= "" then entry.name = name; end
	for group in item:childtags("group") do
		local text = group:get_text();
		if text and text ~= "" then entry.groups[text] = true; end
	end
	return entry;
end

module:hook("iq-set/bare/" .. xmlns .. ":query", function(event)
	local origin, stanza = event.origin, event.stanza;
	if not is_privileged(origin) then
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	local username, host = jid.split(stanza.attr.to);
	if not usermanager.user_exists(username, host) then
		origin.send(st.error_reply(stanza, "cancel", "item-not-found", "No such user"));
		return true;
	end
	local roster = rostermanager.load_roster(username, host);
	if not roster then
		origin.send(st.error_reply(stanza, "wait", "internal-server-error", "Cannot load the roster"));
		return true;
	end
	local owner = jid.bare(stanza.attr.to);
	local changes = {};
	for item in stanza.tags[1]:childtags("item") do
		local contact = item.attr.jid and jid.prep(item.attr.jid);
		if not contact or contact == owner or contact == "pending" or select(3, jid.split(contact)) then
			origin.send(st.error_reply(stanza, "modify", "bad-request", "Invalid item: " .. tostring(item.attr.jid)));
			return true;
		end
		if item.attr.subscription == "remove" then
			changes[#changes + 1] = { contact, nil };
		elseif item.attr.subscription == "both" then
			changes[#changes + 1] = { contact, item_of(item) };
		else
			origin.send(st.error_reply(stanza, "modify", "bad-request", "Subscription must be both or remove"));
			return true;
		end
	end
	local previous = {};
	for _, change in ipairs(changes) do
		local contact = change[1];
		if previous[contact] == nil then previous[contact] = roster[contact] or false; end
		roster[contact] = change[2];
	end
	if not rostermanager.save_roster(username, host, roster) then
		for contact, entry in pairs(previous) do roster[contact] = entry or nil; end
		origin.send(st.error_reply(stanza, "wait", "internal-server-error", "Unable to save roster"));
		return true;
	end
	module:log("debug", "%d roster items written for %s in one save", #changes, owner);
	origin.send(st.reply(stanza));
	return true;
end);

-- The first iq the privileged entity sends to this host (a delegated answer,
-- a write) sets its stream's read size, once per connection.
module:hook("iq/host", function(event)
	local origin = event.origin;
	if origin.type == "component" and not origin.rosteradmin_read_size and is_privileged(origin) then
		origin.rosteradmin_read_size = read_size;
		local conn = origin.conn;
		if conn and conn.set_mode then
			conn:set_mode(read_size);
			module:log("debug", "reading %d bytes at a time from %s", read_size, origin.host);
		end
	end
end, 1000);
