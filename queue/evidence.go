package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Evidence holds the staged NARs of a disputed path: while its record
// lives in BucketWaiting (a pusher deletes it when a quorum agrees, the
// bucket's TTL otherwise), CollectStaging leaves those NARs alone, so that
// `provenix diff` can still compare them. They stay in the tenant's own
// staging bucket, so they count against its JetStream quota. The staging
// stream's MaxAge still removes them (see ensureStaging): a hold outlives
// a NAR only when the dispute lasts longer than results are kept.
type Evidence struct {
	Tenant      string    `json:"tenant"`
	StorePath   string    `json:"storePath"`
	StagingKeys []string  `json:"stagingKeys"`
	Since       time.Time `json:"since"`
}

// EvidencePrefix is the key prefix of every evidence record (KVList it).
const EvidencePrefix = "evidence"

// EvidenceKey is where the evidence of a dispute on storePath is held.
func EvidenceKey(tenant, storePath string) string {
	return EvidencePrefix + "." + tenant + "." + hashOf(storePath)
}

// heldStagingKeys are the staging keys some evidence record holds.
func (c *Conn) heldStagingKeys(ctx context.Context) (map[string]bool, error) {
	m, err := c.KVList(ctx, BucketWaiting, EvidencePrefix)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("evidence holds: %w", err)
	}
	held := map[string]bool{}
	for k, b := range m {
		var e Evidence
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("evidence hold %s: %w", k, err)
		}
		for _, s := range e.StagingKeys {
			held[s] = true
		}
	}
	return held, nil
}
