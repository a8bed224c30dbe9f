-- genq keeps its own copy of every finished video: users get genq's URL, the
-- provider's (which expires) stays on the job for operators.
ALTER TABLE jobs RENAME COLUMN result_url TO provider_result_url;
ALTER TABLE jobs ADD COLUMN video_key text;
ALTER TABLE jobs ADD COLUMN video_bytes bigint;
