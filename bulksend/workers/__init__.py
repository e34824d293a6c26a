"""One campaign, many processes: a planner and workers that share the work through Redis.

``planner`` (``bulksend send CAMPAIGN --workers URL``) reads, validates and deduplicates the file
once and queues batches on a bounded Redis Stream; ``worker`` (``bulksend worker URL``) takes
them with a consumer group, sends under the shared quota and settles each batch in the Redis
journal; ``status`` shows a campaign's progress; ``queue`` is the stream and its keys; ``logic``
the pure decisions of all of them; ``shipped`` what the planner stores for the workers (no
secret) and where a worker finds the key file the campaign names.
"""
