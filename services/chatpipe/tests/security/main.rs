//! The security contract of issue 11 at a glance, against the real running
//! system (Kafka, Cassandra, OpenSearch and chatpipe's roles, started
//! in-process as the binary starts them): every probe here failed on the
//! behaviour it guards against, and passes now. One module per trust
//! boundary.
//!
//! - [`edge`]: the push service's authentication, token lifetime and
//!   refresh on live sockets, token verification options (kid rotation,
//!   issuer, audience), admission per client address (connection cap,
//!   failed authentications, trusted proxies), and unique edge and worker
//!   ids.
//! - [`membership`]: roles (owner, admin, member), the last owner, the
//!   member cap, history visibility for newcomers, and conversations made
//!   before roles existed.
//!
//! The probes of the first table were tested before this directory
//! existed, and still live next to the code they exercise:
//!
//! | probe | test |
//! |---|---|
//! | a 1:1 has fixed membership; an outsider (whatever route, a leave included) gets the same 404 for an existing conversation as for an unknown one, and nothing is published | `services/api/tests/api.rs`: `a_one_to_one_has_fixed_membership_and_outsiders_cannot_tell_it_exists` |
//! | only owners and admins remove others | [`membership`] |
//! | metric labels stay bounded whatever methods and paths clients send | `api.rs`: `metrics_stay_bounded_whatever_methods_and_paths_clients_send` |
//! | the API's deadline and concurrency cap answer with a JSON 503 | `api.rs`: `a_request_past_its_deadline_gets_a_json_503`, `requests_over_the_concurrency_limit_are_shed_with_a_json_503` |
//! | every frame kind, `ping` included, counts against the connection's rate | `services/chatpipe/tests/edge.rs`: `a_ping_burst_is_rate_limited_like_any_frame`, `a_flood_is_limited_without_hurting_another_connection` |
//! | an oversized frame gets close 1009 with a reason | `edge.rs`: `a_frame_too_big_to_read_gets_close_1009_with_a_reason` |
//! | a tokenless flood spends none of the connect budget | `edge.rs`: `a_tokenless_flood_spends_none_of_the_connect_budget` |
//! | sessions per user are capped; a reader that stops reading is closed | `edge.rs`: `sessions_per_user_are_capped`, `a_slow_reader_is_closed_and_its_buffer_stays_bounded` |
//! | bad tokens are refused and counted | `edge.rs`: `bad_tokens_are_refused_with_4001_and_counted`; `api.rs`: `bad_or_expired_tokens_get_401` |
//! | no built-in secret; the former dev string is refused | `services/chatpipe/tests/secret.rs` |
//! | ops endpoints only on the loopback ops listener | `services/chatpipe/tests/ops.rs` |

#[path = "../common/mod.rs"]
mod common;

mod edge;
mod membership;
