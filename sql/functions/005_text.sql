-- 005 text rules: the one function every API function passes its text arguments through (docs/text-rules.md).
-- The canonical form and the resolution key themselves (_text_canon, _text_key) are versioned in V8_020:
-- stored data depends on them. What is here may change freely: limits, kinds, messages.

-- _text_quote: a value as it may appear in an error message: quoted, at most 200 characters of it, and its
-- length when it was cut. A 100 kB name never makes a 100 kB message.
CREATE OR REPLACE FUNCTION sigledger._text_quote(p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN 'NULL';
    ELSIF length(p_value) <= 200 THEN
        RETURN quote_literal(p_value);
    END IF;
    RETURN quote_literal(left(p_value, 200)) || format('... (%s characters)', length(p_value));
END;
$$;

-- _text_list: an array as it may appear in an error message: at most 10 elements, then how many more.
-- NULL for NULL (so that `v_missing IS NOT NULL` still means "something is missing").
CREATE OR REPLACE FUNCTION sigledger._text_list(p_values text[])
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF p_values IS NULL THEN
        RETURN NULL;
    ELSIF cardinality(p_values) <= 10 THEN
        RETURN sigledger._text_quote(array_to_string(p_values, ', ', 'NULL'));
    END IF;
    RETURN sigledger._text_quote(array_to_string(p_values[1:10], ', ', 'NULL'))
           || format(' and %s more', cardinality(p_values) - 10);
END;
$$;

-- _text_norm: THE text rules (docs/text-rules.md), without raising: the value to use, or why not.
--   p_kind 'name'  identifiers people type (names, aliases, mentions, titles, sources, models, providers):
--                  value canonical (_text_canon: trimmed of whitespace and format characters, NFC); must
--                  not be blank; no control character (U+0001-U+001F, U+007F-U+009F) inside.
--          'key'   opaque keys (idempotency keys): must not be blank, no control character; value exactly as
--                  given, since a key's identity is its exact characters: canonicalising would let a replayed
--                  key stored before the rules existed miss its own row.
--          'text'  free text (descriptions, content): value canonical; may be blank, may hold tabs and line
--                  breaks.
--   p_max_chars, p_max_bytes  limits on the value, in characters and in UTF-8 bytes. A byte limit keeps keys
--                  under PostgreSQL's btree entry size (54000 otherwise).
-- NULL gives (NULL, NULL): the caller decides whether NULL is allowed. error names the argument (p_what) and
-- quotes the value (_text_quote). Batches (ingest_signals) call this; single calls call _text_arg.
CREATE OR REPLACE FUNCTION sigledger._text_norm(
    p_value text, p_what text, p_max_chars integer, p_max_bytes integer, p_kind text DEFAULT 'name',
    OUT value text, OUT error text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_bad integer;
BEGIN
    IF p_value IS NULL THEN
        RETURN;
    END IF;
    value := sigledger._text_canon(p_value);
    IF value = '' AND p_kind <> 'text' THEN
        error := format('%s must not be blank (whitespace and format characters do not count), got %s', p_what,
                        sigledger._text_quote(p_value));
    ELSE
        IF p_kind = 'key' THEN
            value := p_value;
        END IF;
        IF p_kind <> 'text' AND value ~ '[\u0001-\u001f\u007f-\u009f]' THEN
            v_bad := length(substring(value FROM '^[^\u0001-\u001f\u007f-\u009f]*')) + 1;
            error := format('%s must not contain control characters, got U+%s at character %s of %s', p_what,
                            upper(lpad(to_hex(ascii(substr(value, v_bad, 1))), 4, '0')), v_bad,
                            sigledger._text_quote(value));
        ELSIF length(value) > p_max_chars THEN
            error := format('%s must be at most %s characters, got %s: %s', p_what, p_max_chars, length(value),
                            sigledger._text_quote(value));
        ELSIF octet_length(value) > p_max_bytes THEN
            error := format('%s must be at most %s bytes in UTF-8, got %s: %s', p_what, p_max_bytes,
                            octet_length(value), sigledger._text_quote(value));
        END IF;
    END IF;
    IF error IS NOT NULL THEN
        value := NULL;
    END IF;
END;
$$;

-- _text_arg: the face of _text_norm for single arguments: returns the value to use, or raises 22023 with the
-- reason. NULL raises p_null_code (22004 "a required argument is NULL" unless the function documents another)
-- or, when p_null_code is NULL (an optional argument), is returned as NULL.
CREATE OR REPLACE FUNCTION sigledger._text_arg(
    p_value text, p_what text, p_max_chars integer, p_max_bytes integer,
    p_kind text DEFAULT 'name', p_null_code text DEFAULT '22004')
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    r record;
    v text;
BEGIN
    IF p_value IS NULL THEN
        IF p_null_code IS NULL THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION USING ERRCODE = p_null_code, MESSAGE = format('%s must not be NULL', p_what);
    END IF;
    -- The rules of _text_norm, inline for a value that passes them (the ledger's hot path runs this for a key,
    -- a model and a provider per cost): no composite result, and for ASCII (NFC already, and whose only
    -- invisible characters are the whitespace btrim removes) not even _text_canon. A value that fails goes
    -- to _text_norm for the reason (tests/core/test_text_rules.py checks that both agree).
    IF octet_length(p_value) = length(p_value) THEN
        v := btrim(p_value, E' \t\n\x0b\f\r');
    ELSE
        v := sigledger._text_canon(p_value);
    END IF;
    IF v <> '' OR p_kind = 'text' THEN
        IF p_kind = 'key' THEN
            v := p_value;
        END IF;
        IF length(v) <= p_max_chars AND octet_length(v) <= p_max_bytes
           AND (p_kind = 'text' OR v !~ '[\u0001-\u001f\u007f-\u009f]') THEN
            RETURN v;
        END IF;
    END IF;
    r := sigledger._text_norm(p_value, p_what, p_max_chars, p_max_bytes, p_kind);
    IF r.error IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = r.error;
    END IF;
    RETURN r.value;
END;
$$;

-- _name_key: the resolution key of a name that passed _text_arg, with its own byte limit: NFKC can expand a
-- character (U+FDFA gives 18), and the key carries a unique index.
CREATE OR REPLACE FUNCTION sigledger._name_key(p_name text, p_what text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v text := sigledger._text_key(p_name);
BEGIN
    IF octet_length(v) > 2400 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s is %s bytes once normalised for matching, the limit is 2400: %s', p_what,
                             octet_length(v), sigledger._text_quote(p_name));
    END IF;
    RETURN v;
END;
$$;

-- text_key: the public face of _text_key, for clients that query view entity_alias_lookup directly.
CREATE OR REPLACE FUNCTION sigledger.text_key(p_name text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SECURITY DEFINER
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    RETURN sigledger._text_key(p_name);
END;
$$;
COMMENT ON FUNCTION sigledger.text_key(text) IS
'The resolution key of a name (docs/text-rules.md): trimmed of whitespace and format characters, NFKC, Unicode default case folding. Aliases match when their keys are equal: query view entity_alias_lookup with WHERE alias_key = sigledger.text_key(name). NULL for NULL; raises nothing.';
