"""The PostgreSQL store's schema: migrations, server-side functions and the statements.

Over 500 lines: the SQL text of every migration, which must stay as it shipped.

Migrations run at start under an advisory lock, so nodes starting together apply them
once; the version is the highest row of `tidings_schema`.
"""

from __future__ import annotations

import asyncpg

from tidings.service.store.base import StoredMessage, decode_headers

SCHEMA_VERSION = 9

# SQLSTATEs raised by tidings_store_message and tidings_add_subscription (class "TD",
# user defined).
_GONE = "TD001"
_SUBSCRIPTION_FULL = "TD003"
_USER_AGENT_FULL = "TD004"
_BYTES_FULL = "TD005"
_STORE_FULL = "TD006"
_TOO_MANY_SUBSCRIPTIONS = "TD007"

# Any number works: it only has to be the same for every node of a cluster.
_MIGRATION_LOCK = 0x7469_6469_6E67  # "tiding"

# Constant SQL text shared by the versions of tidings_store_message (never user input).
# The start of tidings_store_message in every schema: one writer per user agent (its
# limits and topic replacement cannot race), the subscription must exist, then the
# message of the same topic goes.
_LOCK = """
        PERFORM pg_advisory_xact_lock(hashtextextended(p_uaid, 0));
        PERFORM 1 FROM subscriptions WHERE uaid = p_uaid AND channel_id = p_channel_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'subscription gone' USING ERRCODE = 'TD001';
        END IF;
"""
_REPLACE = """        IF p_topic IS NOT NULL THEN
            WITH gone AS (
                DELETE FROM messages
                WHERE uaid = p_uaid AND channel_id = p_channel_id AND topic = p_topic
                RETURNING message_id
            )
            SELECT coalesce(array_agg(message_id), '{}') INTO replaced FROM gone;
        END IF;
"""
_LOCK_AND_REPLACE = _LOCK + _REPLACE

# Its end: the insert, and the ids of the messages the topic replaced.
_INSERT_AND_RETURN = """
        INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                              expires_at, urgency, topic, headers, receipt_id)
        VALUES (p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id);
        RETURN replaced;
    END
    $$;
"""

# The parameters and the variables of tidings_store_message since schema 2.
_QUOTA_PARAMETERS = """\
        p_message_id text, p_uaid text, p_channel_id text, p_body bytea, p_ttl integer,
        p_created_at double precision, p_expires_at double precision, p_urgency text,
        p_topic text, p_headers text, p_receipt_id text, p_max_subscription integer,
        p_max_user_agent integer, p_max_bytes bigint, p_max_stored bigint"""
_DECLARE_COUNTS = """    ) RETURNS text[] LANGUAGE plpgsql AS $$
    DECLARE
        replaced text[] := '{}';
        in_channel bigint;
        stored bigint;
        stored_bytes bigint;
    BEGIN
"""

# The quota checks of tidings_store_message since schema 2.
_CHECK_QUOTAS = """        SELECT count(*) FILTER (WHERE channel_id = p_channel_id), count(*),
               coalesce(sum(octet_length(body)), 0)
        INTO in_channel, stored, stored_bytes
        FROM messages WHERE uaid = p_uaid AND expires_at > p_created_at;
        IF in_channel >= p_max_subscription THEN
            RAISE EXCEPTION 'subscription quota' USING ERRCODE = 'TD003';
        END IF;
        IF stored >= p_max_user_agent THEN
            RAISE EXCEPTION 'user agent quota' USING ERRCODE = 'TD004';
        END IF;
        IF stored_bytes + octet_length(p_body) > p_max_bytes THEN
            RAISE EXCEPTION 'user agent byte quota' USING ERRCODE = 'TD005';
        END IF;
        -- Near the ceiling, pushes take turns on one more lock (held to commit, as is
        -- their count's increment) and look again: exact. Far from it, none waits.
        IF (SELECT sum(n) FROM message_counts) >= p_max_stored - 1024 THEN
            PERFORM pg_advisory_xact_lock(7596132042353772902);
            IF (SELECT sum(n) FROM message_counts) >= p_max_stored THEN
                RAISE EXCEPTION 'store full' USING ERRCODE = 'TD006';
            END IF;
        END IF;
"""

# A TTL-0 push's Topic (PostgresStore.replace_topic, plain statements): the final
# statuses of the signed messages it replaces, then those messages.
_REPLACED_TOPIC_STATUSES = """
    INSERT INTO message_status
    SELECT message_id, vapid_hash, 'replaced', ttl, created_at, expires_at,
           delivered_via, delivered_at, $4, $4
    FROM messages
    WHERE uaid = $1 AND channel_id = $2 AND topic = $3 AND vapid_hash IS NOT NULL
    ON CONFLICT DO NOTHING
"""
_DELETE_TOPIC = (
    "DELETE FROM messages WHERE uaid = $1 AND channel_id = $2 AND topic = $3 RETURNING message_id"
)

# Schema 3: the signed messages a Topic replaces leave their final status.
_REPLACED_STATUSES = """        IF p_topic IS NOT NULL THEN
            INSERT INTO message_status
            SELECT message_id, vapid_hash, 'replaced', ttl, created_at, expires_at,
                   delivered_via, delivered_at, p_created_at, p_created_at
            FROM messages
            WHERE uaid = p_uaid AND channel_id = p_channel_id AND topic = p_topic
              AND vapid_hash IS NOT NULL
            ON CONFLICT DO NOTHING;
        END IF;
"""

# Schema 3's end of tidings_store_message: the key hash of a signed push goes in its
# row (its status while stored: no other write).
_INSERT_WITH_STATUS_AND_RETURN = """
        INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                              expires_at, urgency, topic, headers, receipt_id, vapid_hash)
        VALUES (p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id, p_vapid_hash);
        RETURN replaced;
    END
    $$;
"""

# The parameters and the result of tidings_store_messages (schemas 5 and 6).
_BATCH_SIGNATURE = """\
        p_message_id text[], p_uaid text[], p_channel_id text[], p_body bytea[],
        p_ttl integer[], p_created_at double precision[], p_expires_at double precision[],
        p_urgency text[], p_topic text[], p_headers text[], p_receipt_id text[],
        p_max_subscription integer[], p_max_user_agent integer[], p_max_bytes bigint[],
        p_max_stored bigint[], p_vapid_hash bytea[], p_touched text[]
    ) RETURNS TABLE (replaced text[], code text) LANGUAGE plpgsql AS $$
"""

# The deletion of messages by key (uaid $1, message id $2, at $3; $4 per key: a
# WebSocket acknowledgement, else a DELETE of the message resource), as the CTEs `gone`
# (the deleted rows), their statuses and their receipts. Shared by the statement of one
# deletion (_DELETE_MESSAGES) and tidings_write_batch (schema 6): change it only with a
# migration that replaces that function. A key named twice counts once, with the flag
# of its first place.
_DELETE_KEYS = """
WITH keys AS (
    SELECT DISTINCT ON (k.uaid, k.message_id) k.uaid, k.message_id, k.acknowledged
    FROM unnest($1::text[], $2::text[], $4::boolean[]) WITH ORDINALITY
        AS k(uaid, message_id, acknowledged, i)
    ORDER BY k.uaid, k.message_id, k.i
), gone AS (
    DELETE FROM messages m USING keys k
    WHERE m.uaid = k.uaid AND m.message_id = k.message_id
    RETURNING m.message_id, m.uaid, m.channel_id, m.body, m.ttl, m.created_at,
              m.expires_at, m.urgency, m.topic, m.headers, m.receipt_id, m.delivered,
              m.vapid_hash, m.delivered_via, m.delivered_at, k.acknowledged
), status AS (
    -- A WebSocket acknowledgement (a delivery over WebSocket too); otherwise a DELETE
    -- of the message resource: acknowledged if it was delivered, else the sender's
    -- cancellation.
    INSERT INTO message_status
    SELECT g.message_id, g.vapid_hash,
           CASE WHEN g.acknowledged OR g.delivered_at IS NOT NULL THEN 'acknowledged'
                ELSE 'deleted' END,
           g.ttl, g.created_at, g.expires_at,
           CASE WHEN g.acknowledged THEN coalesce(g.delivered_via, 'websocket')
                ELSE g.delivered_via END,
           CASE WHEN g.acknowledged THEN coalesce(g.delivered_at, $3)
                ELSE g.delivered_at END, $3, $3
    FROM gone g WHERE g.vapid_hash IS NOT NULL
    ON CONFLICT DO NOTHING
), receipt AS (
    INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)
    SELECT g.receipt_id, g.uaid, g.channel_id, g.message_id, 204, $3 FROM gone g
    WHERE g.receipt_id IS NOT NULL AND g.delivered
      AND g.receipt_id IN (SELECT rs.receipt_id FROM receipt_subscriptions rs)
)
"""

# The count triggers' function of schema 6 after its signature (see below).
_COUNT_MESSAGES = """    BEGIN
        -- Usage rows in order, then the stripe: two statements cannot deadlock.
        IF TG_OP = 'INSERT' THEN
            INSERT INTO user_agent_usage AS u (uaid, stored, stored_bytes)
            SELECT uaid, count(*), sum(octet_length(body)) FROM new_rows
            GROUP BY uaid ORDER BY uaid
            ON CONFLICT (uaid) DO UPDATE SET stored = u.stored + excluded.stored,
                stored_bytes = u.stored_bytes + excluded.stored_bytes;
            UPDATE subscriptions s SET stored = s.stored + d.k FROM (
                SELECT uaid, channel_id, count(*) AS k FROM new_rows GROUP BY 1, 2
            ) d WHERE s.uaid = d.uaid AND s.channel_id = d.channel_id;
            UPDATE message_counts SET n = n + (SELECT count(*) FROM new_rows)
            WHERE stripe = pg_backend_pid() & 63;
        ELSE
            PERFORM 1 FROM user_agent_usage WHERE uaid IN (SELECT uaid FROM old_rows)
                ORDER BY uaid FOR UPDATE;
            UPDATE user_agent_usage u SET stored = u.stored - d.k,
                stored_bytes = u.stored_bytes - d.b
            FROM (
                SELECT uaid, count(*) AS k, sum(octet_length(body)) AS b FROM old_rows
                GROUP BY 1
            ) d WHERE u.uaid = d.uaid;
            UPDATE subscriptions s SET stored = s.stored - d.k FROM (
                SELECT uaid, channel_id, count(*) AS k FROM old_rows GROUP BY 1, 2
            ) d WHERE s.uaid = d.uaid AND s.channel_id = d.channel_id;
            UPDATE message_counts SET n = n - (SELECT count(*) FROM old_rows)
            WHERE stripe = pg_backend_pid() & 63;
        END IF;
        RETURN NULL;
    END
    $$;
"""

# tidings_push_one of schema 6 after its name (see below): its parameters and its body.
_PUSH_ONE = "".join(
    (
        _QUOTA_PARAMETERS,
        """,
        p_vapid_hash bytea, OUT replaced text[], OUT code text
    ) LANGUAGE plpgsql AS $$
    DECLARE
        in_channel bigint;
        stored_count bigint;
        stored_bytes_count bigint;
        going bigint := 0;
    BEGIN
        replaced := '{}';
        PERFORM pg_advisory_xact_lock(hashtextextended(p_uaid, 0));
        SELECT s.stored INTO in_channel FROM subscriptions s
        WHERE s.uaid = p_uaid AND s.channel_id = p_channel_id;
        IF NOT FOUND THEN
            code := 'TD001';
            RETURN;
        END IF;
        SELECT u.stored, u.stored_bytes INTO stored_count, stored_bytes_count
        FROM user_agent_usage u WHERE u.uaid = p_uaid;
        IF in_channel >= p_max_subscription OR coalesce(stored_count, 0) >= p_max_user_agent
           OR coalesce(stored_bytes_count, 0) + octet_length(p_body) > p_max_bytes THEN
            -- The counters say "maybe full": count exactly, as before (unexpired
            -- messages, not the ones this push replaces).
            SELECT count(*) FILTER (WHERE m.channel_id = p_channel_id), count(*),
                   coalesce(sum(octet_length(m.body)), 0)
            INTO in_channel, stored_count, stored_bytes_count
            FROM messages m WHERE m.uaid = p_uaid AND m.expires_at > p_created_at
              AND (p_topic IS NULL OR m.channel_id <> p_channel_id
                   OR m.topic IS DISTINCT FROM p_topic);
            IF in_channel >= p_max_subscription THEN
                code := 'TD003';
                RETURN;
            END IF;
            IF stored_count >= p_max_user_agent THEN
                code := 'TD004';
                RETURN;
            END IF;
            IF stored_bytes_count + octet_length(p_body) > p_max_bytes THEN
                code := 'TD005';
                RETURN;
            END IF;
        END IF;
        IF p_topic IS NOT NULL THEN
            SELECT count(*) INTO going FROM messages m
            WHERE m.uaid = p_uaid AND m.channel_id = p_channel_id AND m.topic = p_topic;
        END IF;
        -- Near the ceiling, pushes take turns on one more lock and look again: exact.
        IF (SELECT sum(n) FROM message_counts) - going >= p_max_stored - 1024 THEN
            PERFORM pg_advisory_xact_lock(7596132042353772902);
            IF (SELECT sum(n) FROM message_counts) - going >= p_max_stored THEN
                code := 'TD006';
                RETURN;
            END IF;
        END IF;
        IF going > 0 THEN
            INSERT INTO message_status
            SELECT m.message_id, m.vapid_hash, 'replaced', m.ttl, m.created_at,
                   m.expires_at, m.delivered_via, m.delivered_at, p_created_at, p_created_at
            FROM messages m
            WHERE m.uaid = p_uaid AND m.channel_id = p_channel_id AND m.topic = p_topic
              AND m.vapid_hash IS NOT NULL
            ON CONFLICT DO NOTHING;
            WITH gone AS (
                DELETE FROM messages m
                WHERE m.uaid = p_uaid AND m.channel_id = p_channel_id AND m.topic = p_topic
                RETURNING m.message_id
            )
            SELECT coalesce(array_agg(gone.message_id), '{}') INTO replaced FROM gone;
        END IF;
        INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                              expires_at, urgency, topic, headers, receipt_id, vapid_hash)
        VALUES (p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id, p_vapid_hash);
    END
    $$;
""",
    )
)

# tidings_store_messages of schema 6 after its name (see below).
_STORE_MESSAGES = "".join(
    (
        _BATCH_SIGNATURE,
        """    DECLARE
        pushes integer := coalesce(array_length(p_message_id, 1), 0);
        near boolean;
        -- Per push: 0 its subscription is gone, 1 written in set form, 2 one by one.
        route integer[];
        gone_at bigint[];
        gone_id text[];
        one record;
    BEGIN
        PERFORM pg_advisory_xact_lock(keys.lock_key) FROM (
            SELECT DISTINCT hashtextextended(u, 0) AS lock_key FROM unnest(p_uaid) u
            ORDER BY 1
        ) keys;
        -- Near the ceiling a push takes the global lock before its stripe: so does the
        -- batch (with a margin, as its pushes come nearer while it runs).
        near := (SELECT sum(n) FROM message_counts)
            >= (SELECT min(m) FROM unnest(p_max_stored) m) - 2048;
        IF near THEN
            PERFORM pg_advisory_xact_lock(7596132042353772902);
        END IF;
        PERFORM 1 FROM user_agent_usage WHERE uaid = ANY(p_uaid || p_touched)
            ORDER BY uaid FOR UPDATE;

        -- Room for a push if there is room for it after every earlier push of the batch
        -- to its user agent and subscription (the exact count is never more).
        SELECT array_agg(CASE WHEN NOT w.found THEN 0 WHEN w.room AND NOT near THEN 1
                              ELSE 2 END ORDER BY w.i)
        INTO route
        FROM (
            SELECT b.i, s.uaid IS NOT NULL AS found,
                   s.stored + count(*) OVER sub - 1 < b.max_subscription
                   AND coalesce(u.stored, 0) + count(*) OVER ua - 1 < b.max_user_agent
                   AND coalesce(u.stored_bytes, 0) + sum(octet_length(b.body)) OVER ua
                       <= b.max_bytes
                   AND (b.topic IS NULL OR count(*) OVER same_topic = 1) AS room
            FROM unnest(p_uaid, p_channel_id, p_topic, p_body, p_max_subscription,
                        p_max_user_agent, p_max_bytes)
                 WITH ORDINALITY AS b(uaid, channel_id, topic, body, max_subscription,
                                      max_user_agent, max_bytes, i)
            -- Looked up by key (LIMIT keeps them lateral): a join of small tables
            -- could become a scan of every row, dead versions included.
            LEFT JOIN LATERAL (
                SELECT s.uaid, s.stored FROM subscriptions s
                WHERE s.uaid = b.uaid AND s.channel_id = b.channel_id LIMIT 1
            ) s ON true
            LEFT JOIN LATERAL (
                SELECT u.stored, u.stored_bytes FROM user_agent_usage u
                WHERE u.uaid = b.uaid LIMIT 1
            ) u ON true
            WINDOW ua AS (PARTITION BY b.uaid ORDER BY b.i),
                   sub AS (PARTITION BY b.uaid, b.channel_id ORDER BY b.i),
                   same_topic AS (PARTITION BY b.uaid, b.channel_id, b.topic)
        ) w;

        IF EXISTS (SELECT 1 FROM unnest(p_topic) WITH ORDINALITY t(topic, i)
                   WHERE t.topic IS NOT NULL AND route[t.i] = 1) THEN
            INSERT INTO message_status
            SELECT m.message_id, m.vapid_hash, 'replaced', m.ttl, m.created_at,
                   m.expires_at, m.delivered_via, m.delivered_at, b.created_at, b.created_at
            FROM unnest(p_uaid, p_channel_id, p_topic, p_created_at)
                 WITH ORDINALITY AS b(uaid, channel_id, topic, created_at, i)
            JOIN messages m ON m.uaid = b.uaid AND m.channel_id = b.channel_id
                 AND m.topic = b.topic
            WHERE route[b.i] = 1 AND m.vapid_hash IS NOT NULL
            ON CONFLICT DO NOTHING;
            WITH gone AS (
                DELETE FROM messages m
                USING unnest(p_uaid, p_channel_id, p_topic)
                      WITH ORDINALITY AS b(uaid, channel_id, topic, i)
                WHERE route[b.i] = 1 AND m.uaid = b.uaid AND m.channel_id = b.channel_id
                  AND m.topic = b.topic
                RETURNING b.i, m.message_id
            )
            SELECT array_agg(gone.i), array_agg(gone.message_id) INTO gone_at, gone_id
            FROM gone;
        END IF;
        IF 1 = ANY(route) THEN
            INSERT INTO messages (uaid, message_id, channel_id, body, ttl, created_at,
                                  expires_at, urgency, topic, headers, receipt_id, vapid_hash)
            SELECT b.uaid, b.message_id, b.channel_id, b.body, b.ttl, b.created_at,
                   b.expires_at, b.urgency, b.topic, b.headers, b.receipt_id, b.vapid_hash
            FROM unnest(p_uaid, p_message_id, p_channel_id, p_body, p_ttl, p_created_at,
                        p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id, p_vapid_hash)
                 WITH ORDINALITY AS b(uaid, message_id, channel_id, body, ttl, created_at,
                                      expires_at, urgency, topic, headers, receipt_id,
                                      vapid_hash, i)
            WHERE route[b.i] = 1
            ORDER BY b.i;
        END IF;

        FOR k IN 1 .. pushes LOOP
            IF route[k] = 0 THEN
                replaced := NULL;
                code := 'TD001';
            ELSIF route[k] = 1 THEN
                replaced := '{}';
                IF gone_at IS NOT NULL THEN
                    replaced := coalesce((SELECT array_agg(g.id) FROM unnest(gone_at, gone_id)
                                          AS g(i, id) WHERE g.i = k), '{}');
                END IF;
                code := NULL;
            ELSE
                SELECT * INTO one FROM tidings_push_one(p_message_id[k], p_uaid[k],
                    p_channel_id[k], p_body[k], p_ttl[k], p_created_at[k], p_expires_at[k],
                    p_urgency[k], p_topic[k], p_headers[k], p_receipt_id[k],
                    p_max_subscription[k], p_max_user_agent[k], p_max_bytes[k],
                    p_max_stored[k], p_vapid_hash[k]);
                replaced := one.replaced;
                code := one.code;
            END IF;
            RETURN NEXT;
        END LOOP;
    END
    $$;
""",
    )
)

# Schema 6: quotas read counters instead of counting, and a batch of pushes is written
# in set form (one INSERT), with no subtransaction per push.
#
# Counters: `user_agent_usage` (per user agent: its stored messages and their bytes) and
# `subscriptions.stored` (per subscription), kept by the statement triggers that keep
# the stripes, so every way a message comes or goes (a push, an ack, the expiry sweep,
# a topic replacement, an unsubscribe's cascade, `tidings migrate`) moves them. They
# count every stored message, expired or not until the sweep removes it: while they are
# under a quota the push passes without counting; at or over it the exact count (the
# unexpired messages, as before) decides, so what is refused is what was refused.
#
# Locks, the same order everywhere: the user agents' advisory locks (by key), near the
# ceiling the global lock, the usage rows (by uaid), then the rows written and last the
# count stripe of the writing connection (its trigger takes usage rows in order, then
# that stripe).
#
# tidings_push_one: one push decided before anything is written (the messages its topic
# replaces leave the counts it is checked against), so a refusal writes nothing and
# needs no subtransaction; it answers (replaced, code), code the SQLSTATE of a refusal.
# tidings_store_message keeps its signature (a node of the previous version calls it)
# and raises that code. tidings_store_messages keeps its signature too: a push whose
# subscription is gone is refused in set form; the pushes every counter leaves room for
# even if all the batch's earlier pushes of their user agent and subscription are
# stored (and with no other push of the batch for the same topic) are written by one
# INSERT; the others (near a quota or the ceiling) go one by one through
# tidings_push_one after it, exactly.
_SET_BASED_PUSHES = "".join(
    (
        """
    LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE;  -- counted while nothing is written

    CREATE TABLE user_agent_usage (
        uaid text PRIMARY KEY,
        stored bigint NOT NULL,
        stored_bytes bigint NOT NULL
    );
    INSERT INTO user_agent_usage (uaid, stored, stored_bytes)
    SELECT uaid, count(*), sum(octet_length(body)) FROM messages GROUP BY uaid;
    ALTER TABLE subscriptions ADD COLUMN stored integer NOT NULL DEFAULT 0;
    UPDATE subscriptions s SET stored = m.k FROM (
        SELECT uaid, channel_id, count(*) AS k FROM messages GROUP BY 1, 2
    ) m WHERE s.uaid = m.uaid AND s.channel_id = m.channel_id;

    -- The store's count moves in the stripe of the connection writing (not of the user
    -- agent): two transactions wait on the same stripe only if their backends' pids
    -- share it, where a batch of pushes to many user agents held most stripes of 16.
    INSERT INTO message_counts (stripe, n) SELECT s, 0 FROM generate_series(16, 63) s;

    CREATE OR REPLACE FUNCTION tidings_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
""",
        _COUNT_MESSAGES,
        """
    CREATE FUNCTION tidings_push_one(
""",
        _PUSH_ONE,
        """
    CREATE OR REPLACE FUNCTION tidings_store_message(
""",
        _QUOTA_PARAMETERS,
        """,
        p_vapid_hash bytea
    ) RETURNS text[] LANGUAGE plpgsql AS $$
    DECLARE
        answer record;
    BEGIN
        SELECT * INTO answer FROM tidings_push_one(p_message_id, p_uaid, p_channel_id,
            p_body, p_ttl, p_created_at, p_expires_at, p_urgency, p_topic, p_headers,
            p_receipt_id, p_max_subscription, p_max_user_agent, p_max_bytes, p_max_stored,
            p_vapid_hash);
        IF answer.code IS NOT NULL THEN
            RAISE EXCEPTION 'push refused' USING ERRCODE = answer.code;
        END IF;
        RETURN answer.replaced;
    END
    $$;

    CREATE OR REPLACE FUNCTION tidings_store_messages(
""",
        _STORE_MESSAGES,
        """
    -- A batch of pushes and deletions in one statement (one round trip, one
    -- transaction): the pushes' rows first, in order, then the deleted messages. The
    -- deletions' user agents are locked with the pushes', in the same order.
    CREATE FUNCTION tidings_write_batch(
        p_delete_uaid text[], p_delete_message_id text[], p_now double precision,
        p_delete_acknowledged boolean[],
        p_message_id text[], p_uaid text[], p_channel_id text[], p_body bytea[],
        p_ttl integer[], p_created_at double precision[], p_expires_at double precision[],
        p_urgency text[], p_topic text[], p_headers text[], p_receipt_id text[],
        p_max_subscription integer[], p_max_user_agent integer[], p_max_bytes bigint[],
        p_max_stored bigint[], p_vapid_hash bytea[]
    ) RETURNS TABLE (
        message_id text, uaid text, channel_id text, body bytea, ttl integer,
        created_at double precision, expires_at double precision, urgency text,
        topic text, headers text, receipt_id text, delivered boolean, vapid_hash bytea,
        delivered_via text, delivered_at double precision, acknowledged boolean,
        replaced text[], code text
    ) LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        IF p_message_id = '{}' THEN  -- deletions alone: their statement takes its locks
            RETURN QUERY""",
        _DELETE_KEYS,
        """            SELECT *, NULL::text[], NULL::text FROM gone;
            RETURN;
        END IF;
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::bytea,
            NULL::integer, NULL::float8, NULL::float8, NULL::text, NULL::text, NULL::text,
            NULL::text, NULL::boolean, NULL::bytea, NULL::text, NULL::float8,
            NULL::boolean, s.replaced, s.code
        FROM tidings_store_messages(p_message_id, p_uaid, p_channel_id, p_body, p_ttl,
            p_created_at, p_expires_at, p_urgency, p_topic, p_headers, p_receipt_id,
            p_max_subscription, p_max_user_agent, p_max_bytes, p_max_stored, p_vapid_hash,
            p_delete_uaid) s;
        RETURN QUERY""",
        _DELETE_KEYS,
        """        SELECT *, NULL::text[], NULL::text FROM gone;
    END
    $$;
""",
    )
)

# Schema 7: the exact count of tidings_push_one reads the user agent's messages, never
# the expiry index. PL/pgSQL caches a generic plan after five calls, and for
# `uaid = $1 AND expires_at > $2` the generic plan could scan the expiry index with the
# user agent as a filter: every unexpired message of the store, per push near a quota.
# `+ 0` leaves that index out of the choice (the user agent's messages are bounded by
# its quota; the unexpired ones of the store are not).
_BY_EXPIRY = "FROM messages m WHERE m.uaid = p_uaid AND m.expires_at > p_created_at"
_BY_USER_AGENT = "FROM messages m WHERE m.uaid = p_uaid AND m.expires_at + 0 > p_created_at"
assert _PUSH_ONE.count(_BY_EXPIRY) == 1
_PUSH_ONE_COUNTS_BY_USER_AGENT = "".join(
    (
        "\n    CREATE OR REPLACE FUNCTION tidings_push_one(\n",
        _PUSH_ONE.replace(_BY_EXPIRY, _BY_USER_AGENT),
    )
)

# Schema 8: no foreign key from messages to subscriptions. Its check ran per inserted
# message (a row trigger, a query and a row lock each: 4 of an insert's 11 µs measured).
# What it guaranteed stays, in set form:
# - a message is written only while its subscription exists: the insert trigger adds
#   each message to its subscription's counter, an UPDATE that waits for an uncommitted
#   unsubscribe and then finds the row gone; fewer rows counted than subscriptions
#   written to raises TD001, and the write is undone;
# - a subscription's messages go with it: a statement trigger deletes them (once per
#   statement, as the cascade did per row); an unsubscribe waits for the commit of a
#   push whose counter update holds the subscription's row, then sees its message.
_COUNT_NEW_ROWS = """            UPDATE subscriptions s SET stored = s.stored + d.k FROM (
                SELECT uaid, channel_id, count(*) AS k FROM new_rows GROUP BY 1, 2
            ) d WHERE s.uaid = d.uaid AND s.channel_id = d.channel_id;
"""
_COUNT_NEW_ROWS_OR_REFUSE = """            WITH d AS (
                SELECT uaid, channel_id, count(*) AS k FROM new_rows GROUP BY 1, 2
            ), counted AS (
                UPDATE subscriptions s SET stored = s.stored + d.k FROM d
                WHERE s.uaid = d.uaid AND s.channel_id = d.channel_id RETURNING 1
            )
            SELECT (SELECT count(*) FROM counted) < (SELECT count(*) FROM d) INTO orphans;
            IF orphans THEN  -- a subscription deleted since its push looked it up
                RAISE EXCEPTION 'subscription gone' USING ERRCODE = 'TD001';
            END IF;
"""
_BEGIN = "    BEGIN\n"
assert _COUNT_MESSAGES.count(_COUNT_NEW_ROWS) == 1 and _COUNT_MESSAGES.startswith(_BEGIN)
_NO_FOREIGN_KEY_CHECK_PER_MESSAGE = "".join(
    (
        """
    ALTER TABLE messages DROP CONSTRAINT messages_uaid_channel_id_fkey;

    CREATE FUNCTION tidings_delete_subscriptions_messages() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM messages m USING old_rows o
        WHERE m.uaid = o.uaid AND m.channel_id = o.channel_id;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER subscriptions_messages_gone AFTER DELETE ON subscriptions
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidings_delete_subscriptions_messages();

    CREATE OR REPLACE FUNCTION tidings_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        orphans boolean;
""",
        _COUNT_MESSAGES.replace(_COUNT_NEW_ROWS, _COUNT_NEW_ROWS_OR_REFUSE),
    )
)

# Schema 9: the count trigger finds its counters by key. Joined with the transition
# table, as before, the generic plan a session cached from its first large statement (the
# expiry sweep, a big batch) hashed the whole `subscriptions` table by a sequential scan
# for every later push or acknowledgement: the planner cannot know a transition table is
# a few rows. A loop over the messages' keys updates each counter through its primary
# key, whatever the tables' size or statistics; in uaid order, as the row locks were
# taken before (two batches cannot deadlock). The parts of the schema 8 trigger it
# replaces are cut from its text.
_COUNT_OLD_ROWS = _COUNT_MESSAGES[
    _COUNT_MESSAGES.index("            PERFORM 1 FROM user_agent_usage") : _COUNT_MESSAGES.index(
        "            UPDATE message_counts SET n = n - "
    )
]
_COUNT_OLD_ROWS_BY_KEY = """            FOR keyed IN
                SELECT uaid, count(*) AS k, sum(octet_length(body)) AS b FROM old_rows
                GROUP BY 1 ORDER BY 1
            LOOP
                UPDATE user_agent_usage SET stored = stored - keyed.k,
                    stored_bytes = stored_bytes - keyed.b
                WHERE uaid = keyed.uaid;
            END LOOP;
            FOR keyed IN SELECT uaid, channel_id, count(*) AS k FROM old_rows GROUP BY 1, 2
            LOOP
                UPDATE subscriptions SET stored = stored - keyed.k
                WHERE uaid = keyed.uaid AND channel_id = keyed.channel_id;
            END LOOP;
"""
_COUNT_NEW_ROWS_BY_KEY = """            FOR keyed IN
                SELECT uaid, channel_id, count(*) AS k FROM new_rows GROUP BY 1, 2
            LOOP
                UPDATE subscriptions SET stored = stored + keyed.k
                WHERE uaid = keyed.uaid AND channel_id = keyed.channel_id;
                IF NOT FOUND THEN  -- a subscription deleted since its push looked it up
                    RAISE EXCEPTION 'subscription gone' USING ERRCODE = 'TD001';
                END IF;
            END LOOP;
"""
assert _COUNT_MESSAGES.count(_COUNT_OLD_ROWS) == 1
_COUNTERS_BY_KEY = "".join(
    (
        """
    CREATE OR REPLACE FUNCTION tidings_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        keyed record;
""",
        _COUNT_MESSAGES.replace(_COUNT_NEW_ROWS, _COUNT_NEW_ROWS_BY_KEY).replace(
            _COUNT_OLD_ROWS, _COUNT_OLD_ROWS_BY_KEY
        ),
    )
)

_MIGRATIONS: dict[int, str] = {
    1: "".join(
        (
            """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE user_agents (uaid text PRIMARY KEY, created_at double precision NOT NULL);
    CREATE TABLE subscriptions (
        uaid text NOT NULL,
        channel_id text NOT NULL,
        vapid_hash bytea,
        created_at double precision NOT NULL,
        PRIMARY KEY (uaid, channel_id)
    );
    CREATE TABLE messages (
        uaid text NOT NULL,
        message_id text NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        channel_id text NOT NULL,
        topic text,
        urgency text NOT NULL,
        ttl integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        headers text NOT NULL,
        body bytea NOT NULL,
        receipt_id text,
        delivered boolean NOT NULL DEFAULT false,
        PRIMARY KEY (uaid, message_id),
        FOREIGN KEY (uaid, channel_id) REFERENCES subscriptions ON DELETE CASCADE
    );
    CREATE INDEX messages_by_uaid ON messages (uaid, seq);
    CREATE INDEX messages_by_expiry ON messages (expires_at);
    CREATE UNIQUE INDEX messages_by_topic ON messages (uaid, channel_id, topic)
        WHERE topic IS NOT NULL;
    CREATE TABLE receipt_subscriptions (
        receipt_id text PRIMARY KEY,
        created_at double precision NOT NULL
    );
    CREATE TABLE receipts (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        receipt_id text NOT NULL,
        uaid text NOT NULL,
        channel_id text NOT NULL,
        message_id text NOT NULL,
        status integer NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE INDEX receipts_by_subscription ON receipts (receipt_id, seq);

    -- The whole of store_message in one round trip and one transaction.
    CREATE FUNCTION tidings_store_message(
        p_message_id text, p_uaid text, p_channel_id text, p_body bytea, p_ttl integer,
        p_created_at double precision, p_expires_at double precision, p_urgency text,
        p_topic text, p_headers text, p_receipt_id text, p_max integer
    ) RETURNS text[] LANGUAGE plpgsql AS $$
    DECLARE
        replaced text[] := '{}';
        stored integer;
    BEGIN
""",
            _LOCK_AND_REPLACE,
            """        SELECT count(*) INTO stored FROM messages
        WHERE uaid = p_uaid AND expires_at > p_created_at;
        IF stored >= p_max THEN
            RAISE EXCEPTION 'too many messages' USING ERRCODE = 'TD002';
        END IF;
""",
            _INSERT_AND_RETURN,
        )
    ),
    # Quotas per subscription, per user agent (count and bytes) and for the whole store;
    # an atomic subscription cap; user agents expire when not seen for long.
    #
    # The whole store's message count is kept in 16 rows, the stripe of a message
    # chosen by its user agent, updated by statement triggers: no COUNT(*) per push,
    # and pushes of different user agents rarely wait on the same row (one counter row
    # would make every push of every node take turns). A push reads the sum of the
    # stripes (16 rows of one page). Within 1024 of the ceiling it also takes a global
    # advisory lock, held until its commit like its increment, and reads the sum again:
    # pushes near the ceiling take turns, so it is never passed, unless more than 1024
    # store transactions are in flight at once (more than the pools of all nodes).
    2: "".join(
        (
            """
    ALTER TABLE user_agents ADD COLUMN last_seen double precision NOT NULL DEFAULT 0;
    UPDATE user_agents SET last_seen = greatest(created_at, extract(epoch from now()));
    CREATE INDEX user_agents_by_last_seen ON user_agents (last_seen);

    CREATE TABLE message_counts (stripe integer PRIMARY KEY, n bigint NOT NULL);
    INSERT INTO message_counts (stripe, n) SELECT s, 0 FROM generate_series(0, 15) s;
    UPDATE message_counts c SET n = d.k FROM (
        SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM messages GROUP BY 1
    ) d WHERE c.stripe = d.stripe;

    CREATE FUNCTION tidings_count_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Stripes are locked in order, so two bulk deletes cannot deadlock.
        IF TG_OP = 'INSERT' THEN
            PERFORM 1 FROM message_counts WHERE stripe IN
                (SELECT DISTINCT hashtext(uaid) & 15 FROM new_rows)
                ORDER BY stripe FOR UPDATE;
            UPDATE message_counts c SET n = c.n + d.k FROM (
                SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM new_rows GROUP BY 1
            ) d WHERE c.stripe = d.stripe;
        ELSE
            PERFORM 1 FROM message_counts WHERE stripe IN
                (SELECT DISTINCT hashtext(uaid) & 15 FROM old_rows)
                ORDER BY stripe FOR UPDATE;
            UPDATE message_counts c SET n = c.n - d.k FROM (
                SELECT hashtext(uaid) & 15 AS stripe, count(*) AS k FROM old_rows GROUP BY 1
            ) d WHERE c.stripe = d.stripe;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER messages_counted_in AFTER INSERT ON messages
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidings_count_messages();
    CREATE TRIGGER messages_counted_out AFTER DELETE ON messages
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION tidings_count_messages();

    DROP FUNCTION tidings_store_message(text, text, text, bytea, integer, double precision,
        double precision, text, text, text, text, integer);
    CREATE FUNCTION tidings_store_message(
""",
            _QUOTA_PARAMETERS,
            "\n",
            _DECLARE_COUNTS,
            _LOCK_AND_REPLACE,
            _CHECK_QUOTAS,
            _INSERT_AND_RETURN,
            """
    -- The count and the insert under the user agent's lock: the cap cannot be raced.
    CREATE FUNCTION tidings_add_subscription(
        p_uaid text, p_channel_id text, p_vapid_hash bytea, p_created_at double precision,
        p_max integer
    ) RETURNS subscriptions LANGUAGE plpgsql AS $$
    DECLARE
        found_row subscriptions;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_uaid, 0));
        SELECT * INTO found_row FROM subscriptions
        WHERE uaid = p_uaid AND channel_id = p_channel_id;
        IF FOUND THEN
            RETURN found_row;
        END IF;
        IF p_max IS NOT NULL
           AND (SELECT count(*) FROM subscriptions WHERE uaid = p_uaid) >= p_max THEN
            RAISE EXCEPTION 'too many subscriptions' USING ERRCODE = 'TD007';
        END IF;
        INSERT INTO subscriptions (uaid, channel_id, vapid_hash, created_at)
        VALUES (p_uaid, p_channel_id, p_vapid_hash, p_created_at)
        RETURNING * INTO found_row;
        RETURN found_row;
    END
    $$;
    """,
        )
    ),
    3: """
    CREATE TABLE broadcasts (broadcast_id text PRIMARY KEY, version text NOT NULL);
    """,
    # The status of each VAPID-signed push for its sender (see the SQLite store): in its
    # message's row while stored, then a row of message_status.
    4: "".join(
        (
            """
    ALTER TABLE messages ADD COLUMN vapid_hash bytea;
    ALTER TABLE messages ADD COLUMN delivered_via text;
    ALTER TABLE messages ADD COLUMN delivered_at double precision;
    CREATE TABLE message_status (
        message_id text PRIMARY KEY,
        vapid_hash bytea NOT NULL,
        state text NOT NULL,
        ttl integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        delivered_via text,
        delivered_at double precision,
        final_at double precision,
        ends_at double precision NOT NULL
    );
    CREATE INDEX message_status_by_end ON message_status (ends_at);

    DROP FUNCTION tidings_store_message(text, text, text, bytea, integer, double precision,
        double precision, text, text, text, text, integer, integer, bigint, bigint);
    CREATE FUNCTION tidings_store_message(
""",
            _QUOTA_PARAMETERS,
            ",\n        p_vapid_hash bytea\n",
            _DECLARE_COUNTS,
            _LOCK,
            _REPLACED_STATUSES,
            _REPLACE,
            _CHECK_QUOTAS,
            _INSERT_WITH_STATUS_AND_RETURN,
        )
    ),
    # Group commit (postgres_commit.py): the pushes of one batch in one call. Each is
    # tidings_store_message in a block of its own (a subtransaction), so a refused one
    # is undone alone and answered with its SQLSTATE; the others are kept.
    #
    # First every lock the batch will need, each kind in one order (the user agents'
    # advisory locks by key, then the count stripes, of its pushes and of the user agents
    # `p_touched` by its deletions, by number; near the store's ceiling the global lock
    # in between): two batches (two writers, two nodes) then never wait on each other in
    # a circle, and a single push (advisory lock, [global lock,] then its stripe) or a
    # single delete (stripes in order) follows the same order.
    5: "".join(
        (
            """
    CREATE FUNCTION tidings_store_messages(
""",
            _BATCH_SIGNATURE,
            """    DECLARE
        k bigint;
    BEGIN
        FOR k IN SELECT DISTINCT hashtextextended(u, 0) FROM unnest(p_uaid) u ORDER BY 1 LOOP
            PERFORM pg_advisory_xact_lock(k);
        END LOOP;
        -- Near the ceiling a push takes the global lock before its stripe: so does the
        -- batch (with a margin, as its pushes come nearer while it runs).
        IF (SELECT sum(n) FROM message_counts) >= (SELECT min(m) FROM unnest(p_max_stored) m)
                - 2048 THEN
            PERFORM pg_advisory_xact_lock(7596132042353772902);
        END IF;
        PERFORM 1 FROM message_counts WHERE stripe IN
            (SELECT DISTINCT hashtext(u) & 15 FROM unnest(p_uaid || p_touched) u)
            ORDER BY stripe FOR UPDATE;
        FOR i IN 1 .. coalesce(array_length(p_message_id, 1), 0) LOOP
            BEGIN
                replaced := tidings_store_message(p_message_id[i], p_uaid[i],
                    p_channel_id[i], p_body[i], p_ttl[i], p_created_at[i],
                    p_expires_at[i], p_urgency[i], p_topic[i], p_headers[i],
                    p_receipt_id[i], p_max_subscription[i], p_max_user_agent[i],
                    p_max_bytes[i], p_max_stored[i], p_vapid_hash[i]);
                code := NULL;
            EXCEPTION WHEN OTHERS THEN
                replaced := NULL;
                code := SQLSTATE;
            END;
            RETURN NEXT;
        END LOOP;
    END
    $$;
    """,
        )
    ),
    6: _SET_BASED_PUSHES,
    7: _PUSH_ONE_COUNTS_BY_USER_AGENT,
    8: _NO_FOREIGN_KEY_CHECK_PER_MESSAGE,
    9: _COUNTERS_BY_KEY,
}

# User agents not seen since $1, at most $2, with their subscriptions (and so their
# messages); SKIP LOCKED lets two nodes sweeping at once share the work.
_DELETE_STALE_USER_AGENTS = """
WITH stale AS (
    SELECT uaid FROM user_agents WHERE last_seen < $1
    ORDER BY last_seen LIMIT $2 FOR UPDATE SKIP LOCKED
), subscriptions_gone AS (
    DELETE FROM subscriptions WHERE uaid IN (SELECT uaid FROM stale)
), usage_gone AS (
    DELETE FROM user_agent_usage WHERE uaid IN (SELECT uaid FROM stale)
), gone AS (
    DELETE FROM user_agents WHERE uaid IN (SELECT uaid FROM stale) RETURNING 1
)
SELECT count(*) FROM gone
"""

_SELECT_PENDING = """
SELECT message_id, uaid, channel_id, body, ttl, created_at, expires_at, urgency, topic,
       headers, receipt_id
FROM messages WHERE uaid = $1 AND expires_at > $2 ORDER BY seq LIMIT $3
"""

# Receipt subscriptions nothing can use any more (see the SQLite store).
_DELETE_STALE_RECEIPT_SUBSCRIPTIONS = """
DELETE FROM receipt_subscriptions rs WHERE rs.created_at < $1
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.receipt_id = rs.receipt_id)
  AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.receipt_id = rs.receipt_id)
"""

# Acknowledged or cancelled messages, one or the acknowledgements of one event-loop
# turn, in one statement (one round trip).
_DELETE_MESSAGES = "".join((_DELETE_KEYS, "SELECT * FROM gone\n"))

# A bounded batch, so a large backlog never becomes one huge transaction; SKIP LOCKED
# lets two nodes sweeping at once share the work instead of waiting on each other.
EXPIRY_BATCH = 5000
_DELETE_EXPIRED = """
WITH gone AS (
    DELETE FROM messages WHERE (uaid, message_id) IN (
        SELECT uaid, message_id FROM messages WHERE expires_at <= $1
        ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
    )
    RETURNING receipt_id, uaid, channel_id, message_id, vapid_hash, ttl, created_at,
              expires_at, delivered_via, delivered_at
), status AS (
    INSERT INTO message_status
    SELECT message_id, vapid_hash, 'expired', ttl, created_at, expires_at, delivered_via,
           delivered_at, $1, $1
    FROM gone WHERE vapid_hash IS NOT NULL
    ON CONFLICT DO NOTHING
), receipt AS (
    INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)
    SELECT receipt_id, uaid, channel_id, message_id, 410, $1 FROM gone
    WHERE receipt_id IS NOT NULL
      AND receipt_id IN (SELECT receipt_id FROM receipt_subscriptions)
)
SELECT count(*) FROM gone
"""

# Deliveries (uaid, message id, via, at): of stored messages in their rows, of TTL-0
# pushes (recorded as dropped before they were offered) in their statuses.
_MARK_DELIVERED = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
        AS d(uaid, message_id, via, at)
), stored AS (
    UPDATE messages m SET delivered_via = d.via, delivered_at = d.at FROM d
    WHERE m.uaid = d.uaid AND m.message_id = d.message_id AND m.delivered_at IS NULL
)
UPDATE message_status s SET delivered_via = d.via, delivered_at = d.at, state = 'delivered'
FROM d WHERE s.message_id = d.message_id AND s.state = 'expired' AND s.ttl = 0
  AND s.delivered_at IS NULL
"""

# A status: ended (message_status), or its message's row while it is stored.
# Receipts in one statement, in order, each only while its receipt subscription exists
# (what add_receipt's single INSERT ... WHERE EXISTS did for one).
_INSERT_RECEIPTS = """
INSERT INTO receipts (receipt_id, uaid, channel_id, message_id, status, created_at)
SELECT r.receipt_id, r.uaid, r.channel_id, r.message_id, r.status, r.created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[],
            $6::double precision[])
     WITH ORDINALITY AS r(receipt_id, uaid, channel_id, message_id, status, created_at, n)
WHERE EXISTS (SELECT 1 FROM receipt_subscriptions s WHERE s.receipt_id = r.receipt_id)
ORDER BY r.n
"""

_SELECT_STATUS = """
SELECT message_id, vapid_hash, state, ttl, created_at, expires_at, delivered_via,
       delivered_at, final_at FROM message_status WHERE message_id = $2
UNION ALL
SELECT message_id, vapid_hash,
       CASE WHEN delivered_at IS NULL THEN 'stored' ELSE 'delivered' END, ttl,
       created_at, expires_at, delivered_via, delivered_at, NULL FROM messages
WHERE uaid = $1 AND message_id = $2 AND vapid_hash IS NOT NULL
LIMIT 1
"""


# tidings_push_one's checks as one read, for pushes written to their user agent before
# they are stored (PostgresStore.check_message, postgres_checks.py): per push, the
# SQLSTATE it would refuse with, or NULL; the concurrent pushes of a node in one
# statement, one row each in their order, each checked as if alone (as separate reads
# would). The same order and the same counts as the function, without its locks or any
# write: the subscription; its counters, and the exact count of the user agent's
# unexpired messages (the ones the push's Topic replaces left out) when they say "maybe
# full"; the store's count less those replaced, against the ceiling. A CASE runs a
# subquery only when it is reached, as the function's IFs; the store's count is read
# once. Parameters: arrays of uaid, channel, the body's length, created_at, topic and
# the quotas (per subscription, per user agent, bytes, the store).
_CHECK_MESSAGES = """
SELECT coalesce(
    CASE
        WHEN s.stored IS NULL THEN 'TD001'
        WHEN s.stored >= b.max_subscription OR coalesce(u.stored, 0) >= b.max_user_agent
             OR coalesce(u.stored_bytes, 0) + b.size > b.max_bytes THEN (
            SELECT CASE WHEN e.in_channel >= b.max_subscription THEN 'TD003'
                        WHEN e.stored >= b.max_user_agent THEN 'TD004'
                        WHEN e.stored_bytes + b.size > b.max_bytes THEN 'TD005' END
            FROM (
                SELECT count(*) FILTER (WHERE m.channel_id = b.channel_id) AS in_channel,
                       count(*) AS stored, coalesce(sum(octet_length(m.body)), 0) AS stored_bytes
                FROM messages m WHERE m.uaid = b.uaid AND m.expires_at + 0 > b.created_at
                  AND (b.topic IS NULL OR m.channel_id <> b.channel_id
                       OR m.topic IS DISTINCT FROM b.topic)
            ) e)
    END,
    CASE WHEN (SELECT sum(n) FROM message_counts) - CASE WHEN b.topic IS NULL THEN 0 ELSE (
                  SELECT count(*) FROM messages m
                  WHERE m.uaid = b.uaid AND m.channel_id = b.channel_id AND m.topic = b.topic)
                  END
              >= b.max_stored THEN 'TD006' END) AS code
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::text[], $6::integer[],
            $7::integer[], $8::bigint[], $9::bigint[])
     WITH ORDINALITY AS b(uaid, channel_id, size, created_at, topic, max_subscription,
                          max_user_agent, max_bytes, max_stored, i)
-- Looked up by key (LIMIT keeps them lateral), as in tidings_store_messages.
LEFT JOIN LATERAL (
    SELECT s.stored FROM subscriptions s
    WHERE s.uaid = b.uaid AND s.channel_id = b.channel_id LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT u.stored, u.stored_bytes FROM user_agent_usage u WHERE u.uaid = b.uaid LIMIT 1
) u ON true
ORDER BY b.i
"""
# The exact count reads by user agent, as schema 7's tidings_push_one does.
assert _BY_USER_AGENT.replace("p_uaid", "b.uaid").replace("p_", "b.") in _CHECK_MESSAGES
assert all(
    f"'{code}'" in _CHECK_MESSAGES
    for code in (_GONE, _SUBSCRIPTION_FULL, _USER_AGENT_FULL, _BYTES_FULL, _STORE_FULL)
)


async def migrate(conn: asyncpg.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION (nodes starting together: one at a time)."""
    async with conn.transaction():
        # Held until commit: nodes starting together migrate one after the other.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS tidings_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM tidings_schema") or 0
        for target in sorted(v for v in _MIGRATIONS if v > version):
            await conn.execute(_MIGRATIONS[target])
            await conn.execute("INSERT INTO tidings_schema (version) VALUES ($1)", target)


def _message_from_row(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        message_id=row["message_id"],
        uaid=row["uaid"],
        channel_id=row["channel_id"],
        body=bytes(row["body"]),
        ttl=row["ttl"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        urgency=row["urgency"],
        topic=row["topic"],
        headers=decode_headers(row["headers"]),
        receipt_id=row["receipt_id"],
    )
