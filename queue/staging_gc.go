package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StagingGCOptions select what CollectStaging removes.
type StagingGCOptions struct {
	// MaxAge removes staged objects whose meta is older than MaxAge; zero
	// leaves every whole object alone (the bucket's TTL still applies).
	MaxAge time.Duration
	// Grace leaves orphan chunks whose last chunk is younger than Grace:
	// an upload in progress has chunks but no meta yet. StagingTimeout
	// when zero, the longest a Stage without deadline runs.
	Grace time.Duration
	// DryRun reports and removes nothing.
	DryRun bool
	// Now is the reference time; time.Now() when zero.
	Now time.Time
}

// OrphanChunks is a chunk subject no object's meta names: an interrupted
// upload that could not clean up after itself.
type OrphanChunks struct {
	ID     string    `json:"id"`
	Chunks uint64    `json:"chunks"`
	Last   time.Time `json:"last"`
}

// StagingGCReport says what CollectStaging removed (or would remove).
type StagingGCReport struct {
	DryRun  bool           `json:"dryRun"`
	Objects []StagedInfo   `json:"objects"`
	Orphans []OrphanChunks `json:"orphans"`
	// BytesFreed counts the removed objects; orphan chunks are counted in
	// Orphans[i].Chunks only (at most 128 KiB each).
	BytesFreed uint64 `json:"bytesFreed"`
	Kept       int    `json:"kept"`
	// Held counts the objects kept, although old enough, because they
	// are the evidence of a dispute (see Evidence).
	Held int `json:"held"`
}

// CollectStaging removes staged objects older than opts.MaxAge and orphan
// chunks older than opts.Grace from the staging bucket. It lists the
// objects first and the chunk subjects second, so an upload that completes
// in between has a fresh last chunk and is left alone by Grace. An object
// replaced after the listing (its chunk subject changed) is not removed.
// Errors of single removals are joined; the report lists what went.
func (c *Conn) CollectStaging(ctx context.Context, opts StagingGCOptions) (*StagingGCReport, error) {
	if opts.MaxAge < 0 || opts.Grace < 0 {
		return nil, fmt.Errorf("queue: collect staging: negative MaxAge or Grace")
	}
	if opts.Grace == 0 {
		opts.Grace = StagingTimeout
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	ctx, cancel := withDefaultTimeout(ctx, 10*DefaultTimeout)
	defer cancel()
	obs, stream, err := c.staging(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: collect staging: %w", err)
	}
	objs, err := obs.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, fmt.Errorf("queue: collect staging: list: %w", mapJSError(err))
	}
	slices.SortFunc(objs, func(a, b *jetstream.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })

	held, err := c.heldStagingKeys(ctx)
	if err != nil {
		// Without the holds, removing anything might destroy evidence.
		return nil, fmt.Errorf("queue: collect staging: %w", err)
	}

	// How many messages each subject holds: only a kept object whose
	// meta or commit subject holds more than its last is trimmed.
	counts := map[string]uint64{}
	for _, prefix := range []string{stagingMetaPrefix, stagingChunksPrefix} {
		si, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
		if err != nil {
			return nil, fmt.Errorf("queue: collect staging: subjects: %w", mapJSError(err))
		}
		maps.Copy(counts, si.State.Subjects)
	}

	rep := &StagingGCReport{DryRun: opts.DryRun}
	live := map[string]bool{}
	var errs []error
	for _, o := range objs {
		if opts.MaxAge == 0 || opts.Now.Sub(o.ModTime) < opts.MaxAge || held[o.Name] {
			live[o.NUID] = true
			rep.Kept++
			if held[o.Name] {
				rep.Held++
			}
			if !opts.DryRun {
				if err := trimKept(ctx, stream, o, counts); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if !opts.DryRun {
			if err := c.deleteIfSame(ctx, stream, o); err != nil {
				live[o.NUID] = true
				errs = append(errs, err)
				continue
			}
		}
		// Its chunks went with it (or, in a dry run, would): not orphans.
		live[o.NUID] = true
		rep.Objects = append(rep.Objects, StagedInfo{Key: o.Name, Size: o.Size, Digest: o.Digest})
		rep.BytesFreed += o.Size
	}

	// The chunk subjects as listed above, after the objects: a subject
	// purged since is live or gone, and skipped either way.
	var subjects []string
	for s := range counts {
		if strings.HasPrefix(s, stagingChunksPrefix) {
			subjects = append(subjects, s)
		}
	}
	slices.Sort(subjects)
	cutoff := opts.Now.Add(-opts.Grace)
	for _, subj := range subjects {
		id := strings.TrimPrefix(subj, stagingChunksPrefix)
		if live[id] {
			continue
		}
		last, err := stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				errs = append(errs, fmt.Errorf("queue: collect staging: %s: %w", subj, mapJSError(err)))
			}
			continue
		}
		if !last.Time.Before(cutoff) {
			continue
		}
		if parent, upload, ok := uploadOf(id); ok {
			// An upload's own subject (layoutCommit): kept while it is
			// the one its key's subject commits to last; another, or
			// one never committed, is not read again. Not before
			// StagingTimeout, however short Grace: an upload may still
			// commit until then.
			if !last.Time.Before(opts.Now.Add(-StagingTimeout)) {
				continue
			}
			current, err := stream.GetLastMsgForSubject(ctx, stagingChunksPrefix+parent)
			switch {
			case err == nil && current.Header.Get(uploadHeader) == upload:
				continue
			case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
				errs = append(errs, fmt.Errorf("queue: collect staging: %s: %w", subj, mapJSError(err)))
				continue
			}
		} else if strings.Contains(id, ".") && (opts.MaxAge == 0 || !last.Time.Before(opts.Now.Add(-opts.MaxAge))) {
			// A scoped object's chunks: no meta names them when someone
			// overwrote its meta (anyone may), yet readers still read
			// them. They go by age, as whole objects do.
			continue
		} else if c.chunksNamed(ctx, obs, id) {
			// Named by a meta after all: an upload that completed since
			// the listing (or an old object kept by an error above).
			continue
		}
		if !opts.DryRun {
			// Up to the chunk judged: an upload committing since
			// stays.
			if err := purgeUpTo(ctx, stream, subj, last.Sequence+1); err != nil {
				errs = append(errs, fmt.Errorf("queue: collect staging: purge %s: %w", subj, err))
				continue
			}
		}
		rep.Orphans = append(rep.Orphans, OrphanChunks{ID: id, Chunks: counts[subj], Last: last.Time})
	}
	return rep, errors.Join(errs...)
}

// trimKept drops what kept object o's subjects hold before their last
// message, which no reader takes: earlier metas (they follow each other,
// the stream refuses rollups) and, for a scoped key staged as commits,
// earlier commits (each the last chunk of an upload, a whole small
// object). The purge keeps the subject's last message whatever arrived
// since it was read. A scoped key of layoutRollup has all its chunks on
// its subject, and is left alone. counts (messages per subject) spare the
// requests where there is nothing to trim.
func trimKept(ctx context.Context, stream jetstream.Stream, o *jetstream.ObjectInfo, counts map[string]uint64) error {
	var subjects []string
	if counts[metaSubject(o.Name)] > 1 {
		subjects = append(subjects, metaSubject(o.Name))
	}
	if scope, ok := KeyScope(o.Name); ok && scopedChunkID(o.Name, scope) == o.NUID && counts[stagingChunksPrefix+o.NUID] > 1 {
		subj := stagingChunksPrefix + o.NUID
		last, err := stream.GetLastMsgForSubject(ctx, subj)
		if err == nil && last.Header.Get(uploadHeader) != "" {
			subjects = append(subjects, subj)
		} else if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("queue: collect staging %s: %w", o.Name, mapJSError(err))
		}
	}
	for _, subj := range subjects {
		if err := stream.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeKeep(1)); err != nil {
			return fmt.Errorf("queue: collect staging %s: trim %s: %w", o.Name, subj, mapJSError(err))
		}
	}
	return nil
}

// deleteIfSame deletes o unless its key now names another upload: its
// meta is still the one listed (same chunks, same time stored). A scoped
// key names the same chunk subject on every upload, so the chunks alone
// cannot tell a re-upload since the listing. Only what the stream held up
// to that meta is purged: an upload of the key that starts after the
// check puts its chunks and meta after it, and they stay. The meta goes
// first, and the chunks only if no meta came since: Stage reusing the
// content writes a fresh meta only while the one it read is the last
// (reuse), so it either fails or is seen here.
func (c *Conn) deleteIfSame(ctx context.Context, stream jetstream.Stream, o *jetstream.ObjectInfo) error {
	cur, seq, err := lastMeta(ctx, stream, o.Name)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case errors.Is(err, ErrCorrupt):
		// Not a meta an upload wrote: another's, and not ours to judge.
		return fmt.Errorf("queue: collect staging %s: its meta changed since listing, kept", o.Name)
	case err != nil:
		return fmt.Errorf("queue: collect staging %s: %w", o.Name, err)
	}
	if cur.Deleted || cur.NUID != o.NUID || !cur.ModTime.Equal(o.ModTime) {
		return fmt.Errorf("queue: collect staging %s: replaced since listing, kept", o.Name)
	}
	if err := purgeUpTo(ctx, stream, metaSubject(o.Name), seq+1); err != nil {
		return fmt.Errorf("queue: collect staging %s: %w", o.Name, err)
	}
	if strings.Contains(o.NUID, ".") {
		// A scoped chunk subject. Anyone may write a meta, naming any
		// chunks: the chunks go only when the meta's key is the one
		// they belong to; otherwise the meta alone went.
		if scope, ok := KeyScope(o.Name); !ok || scopedChunkID(o.Name, scope) != o.NUID {
			return nil
		}
	}
	if _, _, err := lastMeta(ctx, stream, o.Name); !errors.Is(err, ErrNotFound) {
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("queue: collect staging %s: %w", o.Name, err)
		}
		return fmt.Errorf("queue: collect staging %s: staged again since listing, kept", o.Name)
	}
	if err := purgeChunks(ctx, stream, o.NUID, seq+1); err != nil {
		return fmt.Errorf("queue: collect staging %s: %w", o.Name, err)
	}
	return nil
}

// chunksNamed reports whether a current object's meta names chunk id. On
// an error it says yes: keeping chunks is the safe side.
func (c *Conn) chunksNamed(ctx context.Context, obs jetstream.ObjectStore, id string) bool {
	objs, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return false
	}
	if err != nil {
		return true
	}
	for _, o := range objs {
		if o.NUID == id {
			return true
		}
	}
	return false
}

// uploadOf splits the chunk id of a layoutCommit upload's own subject
// (<scope>.<digest of key>.<upload>) into its key's chunk id and the
// upload id.
func uploadOf(id string) (parent, upload string, ok bool) {
	parts := strings.Split(id, ".")
	if len(parts) != 3 || len(parts[0]) != scopeLen || !validUpload(parts[2]) {
		return "", "", false
	}
	return parts[0] + "." + parts[1], parts[2], true
}
