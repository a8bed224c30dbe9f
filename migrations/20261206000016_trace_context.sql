-- The W3C trace context of the request that submitted each job (the API's
-- span, child of any traceparent the client sent). Every message about
-- the job is published with it, so the job's steps in every process are
-- spans of one trace; NULL when traces were off at submission.
ALTER TABLE jobs
    ADD COLUMN traceparent text
        CONSTRAINT jobs_traceparent_format
        CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'),
    ADD COLUMN tracestate text
        CONSTRAINT jobs_tracestate_length CHECK (length(tracestate) <= 512);
