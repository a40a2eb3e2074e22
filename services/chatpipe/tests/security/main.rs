//! The security contract of issue 11 at a glance, in one place, against
//! the real running system (Kafka, Cassandra, OpenSearch and chatpipe's
//! roles, started in-process as the binary starts them; the binary itself
//! where start-up is the boundary): every probe here failed on the
//! behaviour it guards against, and passes now. One module per trust
//! boundary.
//!
//! - [`secrets`]: no built-in secret; roles refuse to start without one.
//! - [`edge`]: the push service's authentication, token lifetime and
//!   refresh on live sockets, token verification options (kid rotation,
//!   issuer, audience), admission per client address (connection cap,
//!   failed authentications, trusted proxies), unique edge and worker ids.
//! - [`jwks`]: token keys from a JWKS URL, refreshed and rotated while
//!   running.
//! - [`admission`]: what one connection or one user may cost the edge.
//! - [`api`]: the HTTP API's tokens, existence oracle, metric labels,
//!   deadline and concurrency cap.
//! - [`membership`]: roles (owner, admin, member), the last owner (also
//!   under concurrent leaves), the member cap, history visibility for
//!   newcomers, and conversations made before roles existed.
//! - [`ops`]: ops endpoints only on the loopback ops listener, and a
//!   `topology apply` that keeps what an operator raised.
//!
//! The probes and where each is tested:
//!
//! | probe (issue 11) | test |
//! |---|---|
//! | a side of a 1:1 adds a third person | [`api`]: `a_one_to_one_has_fixed_membership_and_outsiders_cannot_tell_it_exists` |
//! | a member removes the conversation's creator | [`membership`]: `only_owners_and_admins_add_and_admins_remove_only_plain_members` |
//! | a non-member leaves (`DELETE …/members/{self}`): 404, nothing published | [`api`]: `a_one_to_one_has_fixed_membership_and_outsiders_cannot_tell_it_exists` |
//! | an outsider tells an existing conversation from an unknown one | [`api`]: `a_one_to_one_has_fixed_membership_and_outsiders_cannot_tell_it_exists` |
//! | random HTTP methods grow `/metrics` | [`api`]: `metrics_stay_bounded_whatever_methods_and_paths_clients_send` |
//! | a burst of 2,000 pings is all answered | [`admission`]: `a_ping_burst_is_rate_limited_like_any_frame`, `a_flood_is_limited_without_hurting_another_connection` |
//! | a 70 KB frame resets the socket (1006) | [`admission`]: `a_frame_too_big_to_read_gets_close_1009_with_a_reason` |
//! | no or an empty `CHATPIPE_TOKEN_SECRET` runs on a public secret | [`secrets`]: `every_role_refuses_to_start_without_a_secret`, `formerly_built_in_secrets_are_refused_at_start`, `secret_init_writes_a_private_file_that_token_signs_with`; [`ops`]: `tokens_signed_with_a_formerly_built_in_secret_are_refused` |
//! | *read from the code:* the gRPC push port has no authentication (forged frames, `resync`) | [`edge`]: `pushes_without_the_push_key_are_refused_and_deliver_nothing` |
//! | `/metrics` and `/readyz` on the public ports | [`ops`]: `every_role_serves_ops_only_on_its_ops_listener`, `an_edge_ops_listener_answers_until_the_edge_stopped` |
//! | sessions per user are unbounded | [`admission`]: `sessions_per_user_are_capped`, `a_slow_reader_is_closed_and_its_buffer_stays_bounded` |
//! | a tokenless IP locks everyone out with 1013 | [`admission`]: `a_tokenless_flood_spends_none_of_the_connect_budget`; [`edge`]: `connections_per_address_are_capped_and_forwarded_for_counts_only_behind_trusted_proxies`, `an_address_failing_authentication_too_often_is_refused_for_a_while` |
//! | writes without a deadline pin a connection | [`admission`]: `a_client_that_stops_reading_does_not_pin_its_connection` |
//! | a WebSocket outlives its token | [`edge`]: `a_socket_is_closed_with_4011_when_its_token_expires`, `a_refresh_moves_the_deadline`, `a_refresh_with_another_users_or_a_bad_token_is_refused_and_the_deadline_stays` |
//! | `topology apply` wipes an operator's configs | [`ops`]: `apply_keeps_what_an_operator_raised_and_changes_only_what_differs` |
//! | two edges with defaults collide in ids and worker ids | [`edge`]: `edges_never_share_an_id_or_a_worker_id` |
//! | the API has no request timeout or concurrency limit | [`api`]: `a_request_past_its_deadline_gets_a_json_503`, `requests_over_the_concurrency_limit_are_shed_with_a_json_503` |
//!
//! And what the issue asked to build besides:
//!
//! | contract | test |
//! |---|---|
//! | bad tokens are refused and counted | [`admission`]: `bad_tokens_are_refused_with_4001_and_counted`; [`api`]: `bad_or_expired_tokens_get_401` |
//! | keys rotate by kid; `iss`, `aud` and a maximum lifetime are checked | [`edge`]: `rotated_keys_verify_by_kid_and_issuer_and_audience_are_checked` |
//! | RS256 keys from a JWKS URL, refreshed, refetched on an unknown kid, a failed refresh keeps the last good set; an unusable URL stops the start | [`jwks`]: `tokens_verify_with_the_keys_of_a_jwks_url_across_a_rotation`, `a_jwks_url_that_is_unreachable_or_invalid_stops_the_start` |
//! | the last owner hands over before leaving | [`membership`]: `the_last_owner_hands_over_before_leaving` |
//! | two owners leaving at once (two API processes) leave one owner | [`membership`]: `two_owners_leaving_at_once_through_two_apis_leave_one_owner` |
//! | a per-conversation member cap | [`membership`]: `a_conversation_at_its_member_cap_refuses_more` |
//! | newcomers' history, search and inbox follow the conversation's setting | [`membership`]: `joined_visibility_hides_earlier_history_and_search_hits_from_newcomers` |
//! | the creator of an older conversation is its owner | [`membership`]: `the_creator_of_a_conversation_made_before_roles_is_its_owner` |

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod api;
mod edge;
mod jwks;
mod membership;
mod ops;
mod secrets;
