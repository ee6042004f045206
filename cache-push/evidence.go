package cachepush

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

// holdEvidence records the staged NARs of a disputed path (one per
// distinct NAR) so that staging GC keeps them for `provenix diff` until a
// quorum agrees (releaseEvidence) or the record expires with the waiting
// bucket's TTL. A failure is logged: the verdict stands without it.
func (p *Pusher) holdEvidence(ctx context.Context, tenant, storePath string, votes []Vote) {
	nars := DistinctNARs(votes)
	if len(nars) < 2 {
		return
	}
	err := p.cfg.KV.KVUpdate(ctx, queue.BucketWaiting, queue.EvidenceKey(tenant, storePath), func(old []byte) ([]byte, error) {
		e := queue.Evidence{Tenant: tenant, StorePath: storePath, Since: time.Now().UTC()}
		if old != nil && json.Unmarshal(old, &e) != nil {
			e = queue.Evidence{Tenant: tenant, StorePath: storePath, Since: time.Now().UTC()}
		}
		for _, n := range nars {
			if n.StagingKey != "" && !slices.Contains(e.StagingKeys, n.StagingKey) {
				e.StagingKeys = append(e.StagingKeys, n.StagingKey)
			}
		}
		slices.Sort(e.StagingKeys)
		return json.Marshal(e)
	})
	if err != nil {
		p.log.Warn("dispute evidence not held", "path", storePath, "err", err)
	}
}

// releaseEvidence lets staging GC collect a path's NARs once a quorum
// agreed on it; t had more than one answer (else nothing was held).
func (p *Pusher) releaseEvidence(ctx context.Context, tenant, storePath string, t Tally) {
	if t.Verdict != VerdictAgreed || len(t.Groups) < 2 {
		return
	}
	if err := p.cfg.KV.KVDelete(ctx, queue.BucketWaiting, queue.EvidenceKey(tenant, storePath)); err != nil {
		p.log.Warn("dispute evidence not released", "path", storePath, "err", err)
	}
}
