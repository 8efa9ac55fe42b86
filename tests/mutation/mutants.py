"""The mutants of the merge (loader/sql/save.sql, query `merge`) that `python3 dev.py mutate` applies.

Each is (name, old text, new text, why): the old text must occur exactly once in
save.sql, inside the merge (mutate.py refuses to run otherwise, so this list follows
the SQL as it changes). The texts are taken from the merge's logic (WHERE, CASE,
ORDER BY, JOIN, counters), never from its column lists or reasons' wording. A mutant
found equivalent (nothing observable changes) is replaced, saying so below.

Left out as equivalent (by construction; none was run) for tests of one session:
- new_ocr's ORDER BY image_path removed: it only orders index locks so that calls of
  different batches cannot deadlock; one session sees the same rows either way.
- pub's join condition `ON s.public_path IS NOT NULL` made `ON true`: the probe's WHERE
  (o.public_path = NULL) finds nothing for such an input anyway.
- resolved's `AND j.hrej_id IS NOT NULL` dropped: the UPDATE's `r.id = NULL` matches nothing.
- outcome's `r.raw_sha256 = j.raw_sha256` dropped: a call holds one input per position.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    old: str
    new: str
    why: str  # what the mutant breaks, as the README's identity table would see it


MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ stage: the probes
    Mutant(
        "here: position dropped from the probe",
        "WHERE c.batch_id = %(batch_id)s AND c.position = s.pos",
        "WHERE c.batch_id = %(batch_id)s",
        "what P holds is read from any position of the batch",
    ),
    Mutant(
        "hrej: resolved rejects count as open",
        "WHERE r.batch_id = %(batch_id)s AND r.position = s.pos AND r.resolved_at IS NULL",
        "WHERE r.batch_id = %(batch_id)s AND r.position = s.pos",
        "a repaired position still reads as holding its reject",
    ),
    Mutant(
        "hrej: probe switched off",
        ") AS hrej ON (SELECT any_open_reject FROM flags)",
        ") AS hrej ON false",
        "no open reject is ever seen at P: fixes are refused, plain calls store over rejects",
    ),
    Mutant(
        "flags: any_open_reject inverted",
        "WHERE batch_id = %(batch_id)s AND resolved_at IS NULL) AS any_open_reject,",
        "WHERE batch_id = %(batch_id)s AND resolved_at IS NOT NULL) AS any_open_reject,",
        "the open-reject probe runs only for batches with resolved rejects",
    ),
    Mutant(
        "mine: join to the chain changed",
        "JOIN chain_executions c ON c.chain_id = o.chain_id\n        WHERE o.image_path = s.image_path",
        "JOIN chain_executions c ON c.batch_id = %(batch_id)s\n        WHERE o.image_path = s.image_path",
        "where an image is stored is read from any chain of the batch",
    ),
    Mutant(
        "pub: the image itself counts as another user of its public_path",
        "AND o.image_path IS DISTINCT FROM s.image_path",
        "",
        "an image re-sent with its own public_path is a public_path clash",
    ),
    Mutant(
        "legacy: absolute position instead of call-relative",
        "r.position = s.pos - %(first_position)s",
        "r.position = s.pos",
        "version-3 rejects (numbered from the call's first input) are never found",
    ),
    Mutant(
        "legacy: matched by bytes only",
        "AND (r.raw_sha256 = s.raw_sha256 OR r.image_path = s.image_path)",
        "AND r.raw_sha256 = s.raw_sha256",
        "a version-3 reject of an image re-sent with other bytes is counted twice",
    ),
    # ------------------------------------------------------------------ seen, lower
    Mutant(
        "seen: a position without an image counts as holding a path-less input",
        "(st.here_path IS NOT DISTINCT FROM st.image_path AND st.here_id IS NOT NULL)",
        "(st.here_path IS NOT DISTINCT FROM st.image_path)",
        "an input without image_path at a free position reads as already received",
    ),
    Mutant(
        "seen: a reject's image_path no longer identifies its input",
        "OR (r.image_path = st.image_path AND %(mode)s <> 'repair'))",
        ")",
        "another encoding of a rejected image at its position conflicts instead of being unchanged",
    ),
    Mutant(
        "seen: a repair's fix reads as the reject it fixes",
        "(r.image_path = st.image_path AND %(mode)s <> 'repair')",
        "(r.image_path = st.image_path)",
        "a repair line for the image a reject claims is unchanged, not a fix",
    ),
    Mutant(
        "lower: comparison reversed",
        "st.mine_batch = %(batch_id)s AND st.mine_pos > st.pos AND st.pub_batch IS NULL",
        "st.mine_batch = %(batch_id)s AND st.mine_pos < st.pos AND st.pub_batch IS NULL",
        "the highest position takes a duplicated image",
    ),
    Mutant(
        "lower: public_path of another no longer stops a take",
        "st.mine_pos > st.pos AND st.pub_batch IS NULL",
        "st.mine_pos > st.pos",
        "a lower input takes its image with a public_path another image owns",
    ),
    # ------------------------------------------------------------------ judged: verdicts
    Mutant(
        "replace: takes a public_path another owns",
        "WHEN st.pub_batch IS NULL THEN 'replace' ELSE 'refused' END",
        "ELSE 'replace' END",
        "a re-OCR takes another image's public_path",
    ),
    Mutant(
        "replace: another batch's image becomes a reject",
        "AND st.mine_batch IS NOT NULL THEN 'refused'",
        "AND st.mine_batch IS NOT NULL THEN 'elsewhere'",
        "a re-OCR of another batch's image is recorded as a reject, not refused",
    ),
    Mutant(
        "replace: unreadable line refused even at a free position",
        "AND (st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL) THEN 'refused'",
        "THEN 'refused'",
        "a re-OCR's unreadable line at a free position is refused, not a reject",
    ),
    Mutant(
        "repair: a stored success is replaced",
        "AND st.here_path = st.image_path AND st.here_status = 'failed'",
        "AND st.here_path = st.image_path",
        "a repair replaces successes too",
    ),
    Mutant(
        "repair: still bad becomes a second reject",
        "WHEN st.hrej_id IS NOT NULL AND st.reject IS NOT NULL THEN 'supersede'",
        "WHEN st.hrej_id IS NOT NULL AND st.reject IS NOT NULL THEN 'reject'",
        "a fix still bad adds a reject beside the one it was for",
    ),
    Mutant(
        "repair: take without an image stored higher",
        "WHEN st.hrej_id IS NOT NULL AND st.reject IS NULL AND st.lower THEN 'take'",
        "WHEN st.hrej_id IS NOT NULL AND st.reject IS NULL THEN 'take'",
        "every fix of a reject is a take of an image that is not there",
    ),
    Mutant(
        "repair: a failure elsewhere is not repaired",
        "AND st.mine_batch = %(batch_id)s AND st.mine_status = 'failed'",
        "AND st.mine_batch = %(batch_id)s AND st.mine_status = 'success'",
        "a repair of a stored failure from another position is refused",
    ),
    Mutant(
        "plain: conflict judged before a redelivery",
        "WHEN st.seen_here THEN 'unchanged'\n"
        "               WHEN st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL THEN 'conflict'",
        "WHEN st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL THEN 'conflict'\n"
        "               WHEN st.seen_here THEN 'unchanged'",
        "a redelivered input conflicts with itself",
    ),
    Mutant(
        "plain: an open reject is no conflict",
        "WHEN st.here_id IS NOT NULL OR st.hrej_id IS NOT NULL THEN 'conflict'",
        "WHEN st.here_id IS NOT NULL THEN 'conflict'",
        "a plain call stores over an open reject",
    ),
    Mutant(
        "plain: claim swapped for unchanged",
        "WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NULL THEN 'claim'",
        "WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NULL THEN 'unchanged'",
        "the application's image is never given its position",
    ),
    Mutant(
        "plain: take swapped for elsewhere",
        "WHEN st.reject IS NULL AND st.lower THEN 'take'",
        "WHEN st.reject IS NULL AND st.lower THEN 'elsewhere'",
        "a lower position arriving late is a duplicate instead of holding the image",
    ),
    Mutant(
        "plain: fill swapped for new",
        "WHEN st.slot_chain IS NOT NULL THEN 'fill'",
        "WHEN st.slot_chain IS NOT NULL THEN 'new'",
        "a chain without its OCR row gets a second chain at its position",
    ),
    Mutant(
        "reason: greatest instead of least",
        "least(st.mine_pos, st.dup_of)",
        "greatest(st.mine_pos, st.dup_of)",
        "a duplicate names the higher of two first positions",
    ),
    # ------------------------------------------------------------------ writes
    Mutant(
        "new_ocr: fills not inserted",
        "WHERE verdict IN ('new', 'fix', 'fill')\n    ORDER BY image_path",
        "WHERE verdict IN ('new', 'fix')\n    ORDER BY image_path",
        "a slot's input is never stored",
    ),
    Mutant(
        "new_ocr: ON CONFLICT dropped",
        "ORDER BY image_path\n    ON CONFLICT DO NOTHING",
        "ORDER BY image_path",
        "a path another batch claims during the merge aborts the insert instead of being lost and rejected",
    ),
    Mutant(
        "claim: an image stored at a position is claimed again",
        "WHEN st.mine_batch = %(batch_id)s AND st.mine_pos IS NULL THEN 'claim'",
        "WHEN st.mine_batch = %(batch_id)s THEN 'claim'",
        "an image re-sent at another position moves its chain there",
    ),
    Mutant(
        "placed: joined by the derived chain only",
        "JOIN judged j ON coalesce(j.slot_chain, j.new_chain) = n.chain_id",
        "JOIN judged j ON j.new_chain = n.chain_id",
        "an OCR row stored into a slot is not matched to its input",
    ),
    Mutant(
        "new_chain: the derived id even where a chain holds it",
        "CASE WHEN st.chain_taken THEN gen_random_uuid()::text ELSE st.chain_id END AS new_chain",
        "st.chain_id AS new_chain",
        "an image whose deleted OCR row left its chain is refused by the database at another position",
    ),
    Mutant(
        "judged: a re-OCR sent again always replaces",
        "CASE WHEN (SELECT again FROM sent) THEN 'unchanged'\n                        WHEN st.pub_batch",
        "CASE WHEN st.pub_batch",
        "a redelivered re-OCR adds a version, counts its images replaced again, undoes later writes",
    ),
    Mutant(
        "sent: any call of the ledger counts as this one",
        "WHERE batch_id = %(batch_id)s AND digest = %(digest)s) AS again",
        "WHERE batch_id = %(batch_id)s) AS again",
        "a first re-OCR of a batch that committed any call replaces nothing",
    ),
    Mutant(
        "taken: probed only where a chain is here",
        "WHERE s.reject IS NULL AND here.chain_id IS NULL AND mine.id IS NULL",
        "WHERE s.reject IS NULL AND here.chain_id IS NOT NULL AND mine.id IS NULL",
        "the derived id is believed free where a chain holds it",
    ),
    Mutant(
        "new_chains: fixes get no chain",
        "WHERE p.verdict IN ('new', 'fix')",
        "WHERE p.verdict IN ('new')",
        "a repaired position's OCR row points to a chain never made",
    ),
    Mutant(
        "filled: failure recorded as success",
        "failed_tasks = (p.status = 'failed')::integer\n    FROM placed p",
        "failed_tasks = (p.status = 'success')::integer\n    FROM placed p",
        "a filled slot's chain counts its run the wrong way",
    ),
    Mutant(
        "filled: a slot's chain counts one more task",
        "total_tasks = greatest(c.total_tasks, 1)",
        "total_tasks = c.total_tasks + 1",
        "a chain whose OCR row was deleted records a second task when filled",
    ),
    Mutant(
        "claimed: join to the claimed chain dropped",
        "WHERE j.verdict = 'claim' AND c.id = j.mine_chain",
        "WHERE j.verdict = 'claim' AND c.batch_id = %(batch_id)s",
        "a claim moves every chain of the batch to its position",
    ),
    Mutant(
        "replaced_ocr: a take counts as a new OCR run",
        "result_version = o.result_version + (j.verdict = 'replace')::integer",
        "result_version = o.result_version + 1",
        "a lower position taking an image bumps its result version",
    ),
    Mutant(
        "replaced_chains: a take adds a run",
        "total_tasks = c.total_tasks + (NOT r.moved)::integer",
        "total_tasks = c.total_tasks + 1",
        "a taken image's chain records a run that never happened",
    ),
    Mutant(
        "replaced_chains: a taken image keeps its old position",
        "position = CASE WHEN r.moved THEN r.pos ELSE c.position END",
        "position = c.position",
        "the image stays at the higher position after the lower one took it",
    ),
    Mutant(
        "dropped_boxes: ordering before new_boxes removed",
        "WHERE (SELECT count(*) FROM dropped_boxes) >= 0\n    ORDER BY o.id, b.box",
        "ORDER BY o.id, b.box",
        "issue 23's seeded bug: new boxes may meet the old ones' keys",
    ),
    Mutant(
        "dropped_boxes: only taken images lose their boxes",
        "USING replaced_ocr r\n    WHERE b.ocr_execution_id = r.id",
        "USING replaced_ocr r\n    WHERE b.ocr_execution_id = r.id AND r.moved",
        "a replaced result keeps its old boxes",
    ),
    Mutant(
        "kept_results: a take is kept as a version",
        "JOIN ocr_executions o ON o.id = r.id AND NOT r.moved",
        "JOIN ocr_executions o ON o.id = r.id",
        "a take writes result history though no OCR ran",
    ),
    Mutant(
        "new_boxes: replaced results get no boxes",
        "UNION ALL\n        SELECT r.id, r.pos FROM replaced_ocr r",
        "UNION ALL\n        SELECT r.id, r.pos FROM replaced_ocr r WHERE r.moved",
        "a re-OCR or repair stores the result without its boxes",
    ),
    Mutant(
        "resolved: fixes resolve nothing",
        "FROM placed p WHERE p.verdict = 'fix'",
        "FROM placed p WHERE p.verdict = 'new'",
        "a fixed reject stays open",
    ),
    Mutant(
        "resolved: a take resolves by no row",
        "SELECT j.hrej_id, j.mine_id FROM judged j WHERE j.verdict = 'take'",
        "SELECT j.hrej_id, NULL::bigint FROM judged j WHERE j.verdict = 'take'",
        "a reject resolved by taking an image does not name it",
    ),
    Mutant(
        "displaced: the taker's position becomes the duplicate",
        "SELECT j.mine_pos AS pos, j.image_path,",
        "SELECT j.pos AS pos, j.image_path,",
        "the duplicate reject lands on the lower position",
    ),
    Mutant(
        "renamed: every duplicate of the batch renamed",
        "AND r.batch_id = %(batch_id)s AND r.image_path = j.image_path",
        "AND r.batch_id = %(batch_id)s",
        "other images' duplicates are renamed to the taken image's position",
    ),
    Mutant(
        "new_rejects: superseding fixes record nothing",
        "WHERE verdict IN ('reject', 'supersede')\n        UNION ALL",
        "WHERE verdict IN ('reject')\n        UNION ALL",
        "a fix still bad resolves the old reject without recording itself",
    ),
    Mutant(
        "superseded: resolves the wrong verdict's rejects",
        "SELECT hrej_id FROM judged WHERE verdict = 'supersede'",
        "SELECT hrej_id FROM judged WHERE verdict = 'reject'",
        "a fix still bad leaves the reject it was for open",
    ),
    Mutant(
        "superseded: version-3 rejects never resolved",
        "SELECT legacy_id FROM judged WHERE legacy_id IS NOT NULL",
        "SELECT legacy_id FROM judged WHERE legacy_id IS NULL",
        "an input a version-3 loader rejected counts twice",
    ),
    Mutant(
        "ledger: the call is never recorded",
        "    SELECT %(batch_id)s, %(digest)s, %(first_position)s, %(inputs)s\n    FROM wrote",
        "    SELECT %(batch_id)s, sha256(%(digest)s), %(first_position)s, %(inputs)s\n    FROM wrote",
        "a redelivered call is judged again instead of being a 3-statement replay",
    ),
    Mutant(
        "ledger: a call that wrote nothing is recorded",
        "    FROM wrote\n    WHERE wrote.rows\n",
        "    FROM wrote\n",
        "a repair that fixed nothing is taken for a replay once a reject is at its position",
    ),
    # ------------------------------------------------------------------ outcome
    Mutant(
        "outcome: lost inputs reported stored",
        "WHEN j.verdict IN ('new', 'fix', 'fill') AND n.chain_id IS NOT NULL THEN 'stored'",
        "WHEN j.verdict IN ('new', 'fix', 'fill') THEN 'stored'",
        "an input whose path another batch claimed during the merge is reported stored, and never rejected",
    ),
    Mutant(
        "outcome: take reported unchanged",
        "WHEN j.verdict = 'take' THEN 'stored'",
        "WHEN j.verdict = 'take' THEN 'unchanged'",
        "the report misses an image a lower position took",
    ),
    Mutant(
        "outcome: recorded rejects reported unchanged",
        "WHEN j.verdict IN ('reject', 'supersede') AND r.position IS NOT NULL THEN 'rejected'",
        "WHEN j.verdict IN ('reject', 'supersede') AND r.position IS NULL THEN 'rejected'",
        "new rejects are reported unchanged, replayed ones rejected",
    ),
    Mutant(
        "outcome: a take's resolve not reported",
        "LEFT JOIN resolved x ON x.ocr_id = coalesce(n.id, CASE WHEN j.verdict = 'take' THEN j.mine_id END)",
        "LEFT JOIN resolved x ON x.ocr_id = n.id",
        "report.resolved misses a reject resolved by a take",
    ),
    # ------------------------------------------------------------------ counters and totals
    Mutant(
        "delta: new failures counted completed",
        "SELECT (SELECT count(*) FROM new_ocr WHERE status = 'success')",
        "SELECT (SELECT count(*) FROM new_ocr)",
        "completed_images counts failed images",
    ),
    Mutant(
        "delta: success to failure sign flipped (completed)",
        "- (SELECT count(*) FROM replaced_ocr WHERE new_status = 'failed' AND old_status = 'success')\n"
        "           AS completed",
        "+ (SELECT count(*) FROM replaced_ocr WHERE new_status = 'failed' AND old_status = 'success')\n"
        "           AS completed",
        "a re-OCR that fails adds to completed_images",
    ),
    Mutant(
        "delta: success to failure not counted failed",
        "+ (SELECT count(*) FROM replaced_ocr WHERE new_status = 'failed' AND old_status = 'success')\n"
        "           AS failed",
        "AS failed",
        "a re-OCR that fails leaves failed_images as it was",
    ),
    Mutant(
        "delta: resolved rejects sign flipped",
        "- (SELECT count(*) FROM resolved)\n           - (SELECT count(*) FROM superseded) AS rejected",
        "+ (SELECT count(*) FROM resolved)\n           - (SELECT count(*) FROM superseded) AS rejected",
        "a fixed reject adds to failed_images",
    ),
    Mutant(
        "delta: superseded rejects sign flipped",
        "- (SELECT count(*) FROM superseded) AS rejected",
        "+ (SELECT count(*) FROM superseded) AS rejected",
        "a reject replaced by its still-bad fix counts twice",
    ),
    Mutant(
        "delta: rows written no longer count as a change",
        "(SELECT rows FROM wrote) AS changed",
        "false AS changed",
        "a re-OCR that keeps the totals does not move updated_at nor announce",
    ),
    Mutant(
        "base: a stale batch's completed not recounted",
        "CASE WHEN be.totals_stale THEN (SELECT rc.completed FROM",
        "CASE WHEN false THEN (SELECT rc.completed FROM",
        "counters another writer made stale are added to, not recounted",
    ),
    Mutant(
        "base: a stale batch's recount forgets open rejects",
        "(SELECT rc.failed + rc.rejected FROM loader_recount(%(batch_id)s) rc)",
        "(SELECT rc.failed FROM loader_recount(%(batch_id)s) rc)",
        "a recount by the merge drops open rejects from failed_images",
    ),
    Mutant(
        "base: resolved rejects counted as open",
        "WHERE r.batch_id = %(batch_id)s AND r.resolved_at IS NULL) AS rejected",
        "WHERE r.batch_id = %(batch_id)s) AS rejected",
        "the call's rejected_images counts rejects already resolved",
    ),
    Mutant(
        "counted: rejects left out of failed",
        "b.failed + d.failed + d.rejected AS failed",
        "b.failed + d.failed AS failed",
        "new rejects do not count in failed_images",
    ),
    Mutant(
        "totals: the total never grows",
        "    -- completed + failed never exceeds it and the percentage needs no cap.\n"
        "    SELECT c.*, greatest(c.declared, c.completed + c.failed) AS total_images,",
        "    -- completed + failed never exceeds it and the percentage needs no cap.\n"
        "    SELECT c.*, c.declared AS total_images,",
        "more images accounted for than declared leave the total behind",
    ),
    Mutant(
        "batch: the update is not limited to the batch",
        "WHERE be.batch_id = %(batch_id)s\n      AND (t.changed",
        "WHERE (t.changed",
        "every batch's totals are overwritten with this one's",
    ),
)
