%%% mod_rosteradmin_subscriptions: the web application owns this host's
%%% rosters, so presence subscriptions cannot be changed by clients or by
%%% other servers.
%%%
%%% rosteradmin refuses clients' roster sets (they are delegated to it), but
%%% subscription presences are not roster iqs: mod_roster applies them to
%%% the stored rosters itself (RFC 6121 section 3), so a client could add,
%%% remove or half-remove contacts behind the web application's back.  This
%%% module stops the four subscription presence types (subscribe,
%%% subscribed, unsubscribe, unsubscribed) on the hosts it is loaded on, in
%%% both directions, before mod_roster sees them:
%%%
%%%   * sent by a local user's client (user_send_packet): dropped, and the
%%%     client gets a policy-violation error saying why;
%%%   * sent to a local user (roster_in_subscription, before mod_roster's
%%%     handler) from anywhere else (another server, a component, a host
%%%     without this module): dropped, and the sender gets the same error;
%%%   * sent to a local user by the server itself for a user of a host with
%%%     this module (the unsubscribe and unsubscribed mod_roster sends when
%%%     rosteradmin deletes a contact through the HTTP API): dropped
%%%     silently, since that user's client sent nothing (its own are
%%%     stopped above).
%%%
%%% Available, unavailable, probe and error presences pass untouched, so
%%% presence keeps flowing between the contacts the web application lists.
%%%
%%% Installed as an ejabberd contrib module, as the header of
%%% contrib/ejabberd/rosteradmin.yml says: ejabberd compiles it from its
%%% sources with `ejabberdctl module_install mod_rosteradmin_subscriptions`
%%% and loads it on every host with conf/mod_rosteradmin_subscriptions.yml.

-module(mod_rosteradmin_subscriptions).

-behaviour(gen_mod).

-export([start/2, stop/1, reload/3, depends/2, mod_opt_type/1, mod_options/1, mod_doc/0]).
-export([user_send_packet/1, roster_in_subscription/2]).

-include_lib("xmpp/include/xmpp.hrl").

-define(DEFAULT_TEXT, <<"Contacts on this server are managed by its web application; "
                        "subscriptions cannot be changed here.">>).

%% Before mod_roster (50), ejabberd_sm's own check (20) and
%% mod_block_strangers (25): we decide first.
-define(PRIORITY, 10).

start(Host, _Opts) ->
    ejabberd_hooks:add(user_send_packet, Host, ?MODULE, user_send_packet, ?PRIORITY),
    ejabberd_hooks:add(roster_in_subscription, Host, ?MODULE, roster_in_subscription, ?PRIORITY),
    ok.

stop(Host) ->
    ejabberd_hooks:delete(user_send_packet, Host, ?MODULE, user_send_packet, ?PRIORITY),
    ejabberd_hooks:delete(roster_in_subscription, Host, ?MODULE, roster_in_subscription, ?PRIORITY),
    ok.

reload(_Host, _NewOpts, _OldOpts) ->
    ok.

depends(_Host, _Opts) ->
    [].

mod_opt_type(text) ->
    econf:binary().

mod_options(_Host) ->
    [{text, ?DEFAULT_TEXT}].

mod_doc() ->
    #{desc => [<<"Stops subscription presences to and from the host's users: "
                 "rosteradmin's web application owns their rosters.">>],
      opts => [{text, #{value => <<"Text">>,
                        desc => <<"The text of the policy-violation error the sender gets.">>}}]}.

is_subscription(Type) ->
    lists:member(Type, [subscribe, subscribed, unsubscribe, unsubscribed]).

%% A presence a local user's client sends: a subscription one is refused
%% before ejabberd_c2s applies it to the sender's roster and routes it.
user_send_packet({#presence{type = Type} = Pres, #{jid := JID, lserver := LServer} = State} = Acc) ->
    case is_subscription(Type) of
        true ->
            From = case xmpp:get_from(Pres) of
                       undefined -> JID;
                       Sender -> Sender
                   end,
            refuse(LServer, xmpp:set_from(Pres, From)),
            {stop, {drop, State}};
        false ->
            Acc
    end;
user_send_packet(Acc) ->
    Acc.

%% A subscription presence to a local user, before mod_roster applies it.
roster_in_subscription(_Acc, #presence{from = From, to = To} = Pres) ->
    case From of
        #jid{lserver = FromServer} when FromServer /= <<"">> ->
            case gen_mod:is_loaded(FromServer, ?MODULE) of
                true ->
                    %% The server's own: this module stops clients' at send.
                    ok;
                false ->
                    refuse(To#jid.lserver, Pres)
            end;
        _ ->
            ok
    end,
    {stop, false}.

refuse(Host, Pres) ->
    Text = gen_mod:get_module_opt(Host, ?MODULE, text),
    Err = xmpp:err_policy_violation(Text, xmpp:get_lang(Pres)),
    ejabberd_router:route_error(Pres, Err).
