package cachepush

import (
	"context"
	"errors"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// StatusVote is one builder's vote as status reports it.
type StatusVote struct {
	Builder   string    `json:"builder"`
	NarSHA256 string    `json:"narSha256"`
	Time      time.Time `json:"time"`
	NixSig    bool      `json:"nixSig"`
	// Agrees: this vote gave the winning answer (NAR, size and
	// references).
	Agrees bool `json:"agrees"`
}

// PathStatus is where one store path stands under the cache policy: the
// votes on it, the verdict the pushers' tally reaches and why, and what a
// decided path still waits for. Its JSON form is `provenix status --json`.
type PathStatus struct {
	StorePath string       `json:"storePath"`
	System    string       `json:"system,omitempty"`
	Verdict   string       `json:"verdict"`
	Why       string       `json:"why"`
	Winner    string       `json:"winner,omitempty"`
	Votes     []StatusVote `json:"votes"`
	// WaitingFor: decided, but invisible until these references are in
	// the cache (or an upstream).
	WaitingFor   []string   `json:"waitingFor,omitempty"`
	WaitingSince *time.Time `json:"waitingSince,omitempty"`
	Incomplete   *time.Time `json:"incomplete,omitempty"`
	// Diff compares the NARs of a disputed path (status --diff).
	Diff *PathDiff `json:"diff,omitempty"`
}

// StatusPaths are the store paths status reports on for target: target
// itself, or every output of target when it is a .drv (read from the
// store rooted at storeRoot, "" for /).
func StatusPaths(target, storeRoot string) ([]string, error) {
	if !strings.HasSuffix(target, ".drv") {
		return []string{target}, nil
	}
	d, err := (&nix.Nix{Root: storeRoot}).ReadDerivation(target)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, o := range d.Outputs {
		paths = append(paths, o.Path)
	}
	return paths, nil
}

// Status reads the votes on storePath in tenant, the voters' records and
// the path's waiting record, and says where it stands: the tally the
// pusher would reach (PathTally), which votes agree with its answer, and,
// for a decided path whose references are not visible yet, what it waits
// for (a content-addressed path waits without votes: VerdictWaiting).
func Status(ctx context.Context, kv KV, pol *policy.Policy, tenant, storePath string) (*PathStatus, error) {
	t, votes, system, err := PathTally(ctx, kv, pol, tenant, storePath)
	if err != nil {
		return nil, err
	}
	ps := &PathStatus{StorePath: storePath, System: system, Votes: []StatusVote{},
		Verdict: t.Verdict, Why: t.Why, Winner: t.Winner}
	for _, v := range votes {
		ps.Votes = append(ps.Votes, StatusVote{Builder: v.Builder, NarSHA256: v.NarSHA256, Time: v.Time, NixSig: v.NixSig != "",
			Agrees: t.Answer != "" && v.Answer() == t.Answer})
	}
	if len(votes) == 0 {
		ps.Why = "no votes (not built yet, or the votes expired)"
	}
	w, err := GetWaiting(ctx, kv, tenant, storePath)
	if err != nil && !errors.Is(err, queue.ErrNotFound) {
		return nil, err
	}
	if w != nil {
		ps.WaitingFor, ps.WaitingSince, ps.Incomplete = w.Missing, &w.Since, w.Incomplete
		if len(votes) == 0 {
			ps.Verdict, ps.Why = VerdictWaiting, "decided by its content address"
		}
		ps.Why += "; not visible until its references are"
	}
	return ps, nil
}
