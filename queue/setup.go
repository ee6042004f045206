package queue

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/retry"
)

const (
	// resultsDuplicates is RESULTS' duplicate window: a builder retrying a
	// publish within it (after a timeout, a reconnect, a leader change)
	// does not create a second message.
	resultsDuplicates = 10 * time.Minute
	// resultHeaderAllowance is room for the headers (Nats-Msg-Id and the
	// like) on top of an encoded result of MaxResultSize bytes: the server
	// counts headers against a stream's MaxMsgSize.
	resultHeaderAllowance = 4 << 10
)

// StreamOptions configures EnsureStreams.
type StreamOptions struct {
	// MaxAge is how long results and events are kept; DefaultMaxAge when 0.
	MaxAge time.Duration
	// Replicas of every stream, of the staging bucket and of the KV
	// buckets. 0 picks DefaultReplicas for the server connected to:
	// ClusterReplicas (3) on a cluster of at least 3 servers, 1 otherwise.
	// An explicit value wins.
	Replicas int
	// UsageMaxAge is how long usage records (StreamUsage) are kept:
	// the window a bill can cover. DefaultUsageMaxAge when 0.
	UsageMaxAge time.Duration
}

// ClusterReplicas is the replica count EnsureStreams picks on a cluster of
// at least that many servers: one server may fail (or be restarted for an
// upgrade) and the other two still form a majority.
const ClusterReplicas = 3

// ClusterSize estimates how many servers the connected cluster has: 1 when
// the server is not in a cluster, else 1 plus the other servers it
// advertises to clients (its INFO connect_urls) that are not the one we
// are on. The estimate is low right after a cluster starts, before the
// routes are up (a later EnsureStreams then scales the streams up), and
// servers that hide their URLs (no_advertise) are not counted: pass
// StreamOptions.Replicas explicitly then.
func (c *Conn) ClusterSize() int {
	if c.nc.ConnectedClusterName() == "" {
		return 1
	}
	// Servers is the connection's pool: the URLs given to Connect plus
	// those the servers advertised. Given and advertised URLs may name
	// one server twice (a host name and its address); DefaultReplicas
	// only asks "at least 3", and a server asked for more replicas than
	// it has peers refuses with a clear error rather than losing data.
	seen := map[string]bool{}
	for _, s := range c.nc.Servers() {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		seen[u.Host] = true
	}
	return max(len(seen), 1)
}

// DefaultReplicas is the replica count EnsureStreams uses when
// StreamOptions.Replicas is 0: ClusterReplicas when ClusterSize is at
// least that, else 1.
func (c *Conn) DefaultReplicas() int {
	if c.ClusterSize() >= ClusterReplicas {
		return ClusterReplicas
	}
	return 1
}

// EnsureStreams creates the RESULTS, EVENTS, REBUILD and USAGE streams,
// the staging Object Store bucket and the KV buckets, or updates them to
// o. It is idempotent: every builder and pusher may call it at start-up. It retries what a cluster
// answers while it elects leaders (see PublishResult) until ctx ends; a
// ctx without deadline gets PublishTimeout.
//
// After each create or update it reads the configuration back and fails if
// a field we set came back different: older servers silently drop fields
// they do not know, and a RESULTS stream without its duplicate window or
// size limit would look fine until it mattered.
func (c *Conn) EnsureStreams(ctx context.Context, o StreamOptions) error {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxAge < 0 || o.UsageMaxAge < 0 {
		return fmt.Errorf("queue: ensure streams: negative MaxAge %s or UsageMaxAge %s", o.MaxAge, o.UsageMaxAge)
	}
	if o.Replicas == 0 {
		o.Replicas = c.DefaultReplicas()
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		return fmt.Errorf("queue: ensure streams: replicas %d not in 1..5", o.Replicas)
	}
	ctx, cancel := withDefaultTimeout(ctx, PublishTimeout)
	defer cancel()
	// A pusher restarted while the cluster elects a leader (the usual
	// moment: the machine that died ran both) must wait for it, not exit.
	retries := connectRetry
	retries.OnRetry = func(_ int, _ time.Duration, err error) {
		c.log.Debug("queue: ensure streams failed, retrying", logKeyErr, err)
	}
	return retry.Do(ctx, retries, func(attempt int) error {
		actx, acancel := context.WithTimeout(ctx, ensureAttempts.Delay(attempt))
		defer acancel()
		err := c.ensureAll(actx, o)
		if err != nil && !retryable(err) && !clusterSettling(err) {
			return retry.Stop(err)
		}
		return err
	})
}

// JetStream error codes a cluster gives while it settles.
const (
	jsErrClusterNoPeers  jetstream.ErrorCode = 10005 // "no suitable peers for placement"
	jsErrSubjectsOverlap jetstream.ErrorCode = 10065 // "subjects overlap with an existing stream"
)

// jsErrRollupFailed is a stream's refusal of a rollup ("rollup not
// permitted", JSStreamRollupFailedErr).
const jsErrRollupFailed jetstream.ErrorCode = 10111

// clusterSettling reports refusals that pass once a cluster has settled:
// a replicated stream refused for want of peers (a cluster still forming,
// or a server down until it is back), and a create refused because the
// stream exists after all (nats.go creates when an update answered "stream
// not found", which a replica that is not yet current says during an
// election). EnsureStreams retries them until its ctx ends; a real overlap
// with another stream then fails with the server's message.
func clusterSettling(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jsErrClusterNoPeers || apiErr.ErrorCode == jsErrSubjectsOverlap)
}

// ensureAttempts bounds each pass of EnsureStreams: the first gets 3 s,
// each retry twice as long, up to 12 s. A request to a leader that just
// died gets no answer at all, so the first wait is short.
var ensureAttempts = retry.Policy{Initial: 3 * time.Second, Max: 12 * time.Second}

func (c *Conn) ensureAll(ctx context.Context, o StreamOptions) error {
	for _, cfg := range []jetstream.StreamConfig{resultsConfig(o), eventsConfig(o), rebuildConfig(o), usageConfig(o)} {
		if err := c.ensureStream(ctx, cfg); err != nil {
			return err
		}
	}
	if err := c.ensureStaging(ctx, o); err != nil {
		return err
	}
	return c.ensureKV(ctx, o)
}

// messageStream is what the message streams (results, events, rebuild
// requests) share: kept on disk for o.MaxAge with o.Replicas, the oldest
// dropped first, every message kept until then (LimitsPolicy).
func messageStream(o StreamOptions, name, description, subjects string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: description,
		Subjects:    []string{subjects},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		Replicas:    o.Replicas,
	}
}

func resultsConfig(o StreamOptions) jetstream.StreamConfig {
	// Limits, not WorkQueue or Interest: every pusher group must see
	// every result, including those published before it subscribed.
	c := messageStream(o, StreamResults, "Provenix build results (signed), one durable consumer per pusher group", ResultsFilter(""))
	c.Duplicates = min(resultsDuplicates, o.MaxAge) // the server refuses a window above MaxAge
	c.MaxMsgSize = MaxResultSize + resultHeaderAllowance
	return c
}

func eventsConfig(o StreamOptions) jetstream.StreamConfig {
	return messageStream(o, StreamEvents, "Provenix pusher events (publications, rejections)", subjectEvents+".>")
}

func (c *Conn) ensureStream(ctx context.Context, want jetstream.StreamConfig) error {
	if c.upToDate(ctx, want) {
		return nil
	}
	var s jetstream.Stream
	err := c.denyAware(ctx, jsAPIFor(want.Name, ""), func(ctx context.Context) (err error) {
		s, err = c.js.CreateOrUpdateStream(ctx, want)
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: ensure stream %s: %w", want.Name, mapJSError(err))
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("queue: ensure stream %s: read back: %w", want.Name, err)
	}
	if err := checkStreamConfig(want, info.Config); err != nil {
		return fmt.Errorf("queue: ensure stream %s: %w", want.Name, err)
	}
	return nil
}

// ensureStaging creates the staging bucket. Staged NARs live as long as
// results do (MaxAge): a NAR is useful exactly while a result referring to
// it can still be consumed, and no pusher knows when every group is done
// with one. Without a TTL the bucket would grow with every build. (A
// result that reuses an older staged NAR can outlive it; only a group
// lagging by nearly MaxAge would then see "staged NAR missing".)
//
// The stream refuses rollups. nats.go makes an Object Store with rollups
// allowed, for metas that replace their predecessor; but a stream that
// allows them takes a "Nats-Rollup: all" header on any message, which
// purges every other message, and permissions cannot look at headers: a
// runner allowed to stage in its own scope could wipe every builder's
// staged NARs with one chunk. Stage writes no rollup (readers take a
// subject's last message), deletes by purging, and later changes update
// the stream's own configuration, since nats.go's create-or-update would
// ask for rollups again.
func (c *Conn) ensureStaging(ctx context.Context, o StreamOptions) error {
	// What Stage and nats.go's object reader depend on.
	want := jetstream.StreamConfig{
		Name:     stagingStream,
		Subjects: []string{stagingChunksPrefix + ">", stagingMetaPrefix + ">"},
		Storage:  jetstream.FileStorage,
		Replicas: o.Replicas,
		Discard:  jetstream.DiscardNew,
		MaxAge:   o.MaxAge,
	}
	hardened := func(got jetstream.StreamConfig) bool { return !got.AllowRollup }
	// The stream nats.go's CreateObjectStore makes, rollups off.
	create := func(ctx context.Context) (jetstream.Stream, error) {
		cfg := want
		cfg.Description, cfg.MaxBytes, cfg.AllowDirect, cfg.Duplicates = stagingDescription, -1, true, duplicateWindow(o.MaxAge)
		return c.js.CreateStream(ctx, cfg)
	}
	edit := func(got *jetstream.StreamConfig) {
		got.Description, got.Replicas, got.MaxAge, got.AllowRollup = stagingDescription, o.Replicas, o.MaxAge, false
		if o.MaxAge > 0 && got.Duplicates > o.MaxAge {
			got.Duplicates = o.MaxAge // the server wants the window within MaxAge, as nats.go makes it
		}
	}
	return c.ensureHardened(ctx, BucketStaging, want, hardened, create, edit)
}

// duplicateWindow is nats.go's for a bucket with ttl: the server's
// default, or ttl when shorter (the server wants it within MaxAge).
func duplicateWindow(ttl time.Duration) time.Duration {
	if ttl > 0 && ttl < 2*time.Minute {
		return ttl
	}
	return 2 * time.Minute
}

// ensureHardened makes the stream want.Name of bucket exist (create makes
// it when it is missing, with the settings we turn off already off: made
// as nats.go makes it and updated after, a crash in between would leave
// rollups allowed until the next EnsureStreams) with want's settings and
// those hardened accepts: when they are not,
// edit changes the stream's own configuration, and the update must come
// back ok. It is for buckets nats.go makes with settings we turn off
// (rollups): its create-or-update would ask for them again, which the
// server then refuses. A bounded read comes first, as in upToDate.
func (c *Conn) ensureHardened(ctx context.Context, bucket string, want jetstream.StreamConfig, hardened func(jetstream.StreamConfig) bool,
	create func(context.Context) (jetstream.Stream, error), edit func(*jetstream.StreamConfig)) error {
	ok := func(got jetstream.StreamConfig) bool { return checkStreamConfig(want, got) == nil && hardened(got) }
	var s jetstream.Stream
	lookup := func(ctx context.Context) error {
		return c.denyAware(ctx, jsAPIFor(want.Name, ""), func(ctx context.Context) (err error) {
			s, err = c.js.Stream(ctx, want.Name)
			return err
		})
	}
	rctx, cancel := context.WithTimeout(ctx, upToDateWait)
	err := lookup(rctx)
	cancel()
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		err = lookup(ctx) // the bounded read was not answered in time
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = c.denyAware(ctx, jsAPIFor(want.Name, ""), func(ctx context.Context) (err error) {
			s, err = create(ctx)
			return err
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = lookup(ctx) // another one made it meanwhile
		}
	}
	if err != nil {
		return fmt.Errorf("queue: ensure bucket %s: %w", bucket, mapJSError(err))
	}
	got := s.CachedInfo().Config
	if ok(got) {
		return nil
	}
	edit(&got)
	err = c.denyAware(ctx, jsAPIFor(want.Name, ""), func(ctx context.Context) (err error) {
		s, err = c.js.UpdateStream(ctx, got)
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: ensure bucket %s: %w", bucket, mapJSError(err))
	}
	if got := s.CachedInfo().Config; !ok(got) {
		return fmt.Errorf("queue: ensure bucket %s: %w: %v, deny_purge %v, allow_rollup_hdrs %v",
			bucket, ErrConfigDropped, checkStreamConfig(want, got), got.DenyPurge, got.AllowRollup)
	}
	return nil
}

const stagingDescription = "Provenix NARs between builder and pushers"

// upToDateWait bounds upToDate's read, so that a cluster slow to answer
// leaves the attempt its time for the create-or-update.
const upToDateWait = 2 * time.Second

// upToDate reports whether the stream want.Name exists with want's
// settings, so that EnsureStreams need not write. Every builder and pusher
// calls it at start, and a create-or-update is a write through the
// cluster's meta leader, which during an election (a pusher restarted
// together with a server) answers late or not at all; a read is answered
// by any current replica. A failed read only means "not known to be up to
// date": the create-or-update then says what is wrong.
func (c *Conn) upToDate(ctx context.Context, want jetstream.StreamConfig) bool {
	ctx, cancel := context.WithTimeout(ctx, upToDateWait)
	defer cancel()
	var s jetstream.Stream
	err := c.denyAware(ctx, jsAPIFor(want.Name, ""), func(ctx context.Context) (err error) {
		s, err = c.js.Stream(ctx, want.Name)
		return err
	})
	return err == nil && checkStreamConfig(want, s.CachedInfo().Config) == nil
}

// checkStreamConfig compares the fields of want that are set (non-zero)
// with got. Zero fields are skipped: a server that drops a field leaves it
// zero, so only a field we set can have been dropped. Retention and
// discard policy are compared always: their zero values (Limits, Old)
// mean something, and an existing stream may have another.
func checkStreamConfig(want, got jetstream.StreamConfig) error {
	var diffs []string
	check := func(field string, set, same bool, w, g any) {
		if set && !same {
			diffs = append(diffs, fmt.Sprintf("%s: want %v, got %v", field, w, g))
		}
	}
	check("subjects", len(want.Subjects) > 0, slices.Equal(want.Subjects, got.Subjects), want.Subjects, got.Subjects)
	check("retention", true, want.Retention == got.Retention, want.Retention, got.Retention)
	check("max_age", want.MaxAge != 0, want.MaxAge == got.MaxAge, want.MaxAge, got.MaxAge)
	check("duplicate_window", want.Duplicates != 0, want.Duplicates == got.Duplicates, want.Duplicates, got.Duplicates)
	check("storage", want.Storage != 0, want.Storage == got.Storage, want.Storage, got.Storage)
	check("max_msg_size", want.MaxMsgSize != 0, want.MaxMsgSize == got.MaxMsgSize, want.MaxMsgSize, got.MaxMsgSize)
	check("discard", true, want.Discard == got.Discard, want.Discard, got.Discard)
	check("num_replicas", want.Replicas != 0, want.Replicas == got.Replicas, want.Replicas, got.Replicas)
	check("allow_rollup_hdrs", want.AllowRollup, got.AllowRollup, want.AllowRollup, got.AllowRollup)
	if len(diffs) > 0 {
		return fmt.Errorf("%w: %s", ErrConfigDropped, strings.Join(diffs, "; "))
	}
	return nil
}
