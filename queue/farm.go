package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The farm (package farm): build requests for workers and their reports,
// one work-queue stream, and the build sets' state in a KV bucket. Names
// are here rather than in names.go to keep the feature in one file, as
// rebuild.go does.
const (
	// StreamFarm holds build requests (farm.build.<tenant>.<system>.<class>).
	// It is a work queue: each request goes to one worker of its subject,
	// and leaves the stream when acked or terminated.
	StreamFarm = "FARM"
	// StreamFarmReports holds workers' reports
	// (farm.report.<tenant>.<scope>, FarmReportSubject): one scheduler
	// handles each (a shared durable consumer), and they stay for the
	// farm's statistics (ReadFarmReports) as long as StreamOptions.MaxAge
	// times 4. Its subjects, farm.report.>, cover the reports of every
	// version: an existing stream needs no update.
	StreamFarmReports = "FARM_REPORTS"
	// BucketFarm holds the build sets: their definition (set, node and
	// class keys, written once) and their state (state and claim keys,
	// updated with compare-and-set).
	BucketFarm = "PROVENIX_FARM"
	// FarmConsumerPrefix prefixes every durable consumer the farm makes.
	FarmConsumerPrefix = "farm-"

	subjectFarm       = "farm"
	subjectFarmBuild  = subjectFarm + ".build"
	subjectFarmReport = subjectFarm + ".report"

	// farmDuplicates is FARM's duplicate window: a request published
	// again with the same Nats-Msg-Id within it (by a scheduler that
	// restarted, or by a second scheduler) is stored once. Past it, the
	// worker's claim (compare-and-set in BucketFarm) still keeps a
	// replica from being built twice.
	farmDuplicates = time.Hour
	// MaxFarmMsgSize bounds one farm message (a request or a report with
	// the tail of a build log).
	MaxFarmMsgSize = 64 << 10
)

// FarmBuildSubject is the subject of build requests of tenant for system
// and feature class (see farm.FeatureClass).
func FarmBuildSubject(tenant, system, class string) (string, error) {
	for what, s := range map[string]string{"tenant": tenant, "system": system, "class": class} {
		if err := ValidToken(s); err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
	}
	return subjectFarmBuild + "." + tenant + "." + system + "." + class, nil
}

// FarmReportSubject is the subject of the reports of tenant's builder
// builderID: farm.report.<tenant>.<StagingScope(builderID)>, as usage
// records have (UsageSubject). A runner user may publish on its own
// builder's subject only (RunnerPermissions), so a report arriving on
// it was sent by that builder's user: its readers (the scheduler, the
// statistics) refuse a report that names another builder than its
// subject's.
func FarmReportSubject(tenant, builderID string) (string, error) {
	if err := ValidToken(tenant); err != nil {
		return "", fmt.Errorf("tenant: %w", err)
	}
	if builderID == "" {
		return "", fmt.Errorf("%w: a farm report without builder id", ErrInvalidName)
	}
	return subjectFarmReport + "." + tenant + "." + StagingScope(builderID), nil
}

// FarmReportFilter matches every report, of every tenant.
const FarmReportFilter = subjectFarmReport + ".>"

// FarmEventsFilter matches the pushers' events the farm follows, of
// every tenant: publications and rejections (and the kinds it ignores).
const FarmEventsFilter = subjectEvents + ".>"

// FarmConsumer is the durable consumer name for a farm filter subject:
// readable, with a digest because tokens may hold '-' and be long. A
// work queue allows one consumer per subject, so every worker serving a
// subject (or every scheduler of a group) shares it.
func FarmConsumer(filter string) string {
	sum := sha256.Sum256([]byte(filter))
	readable := strings.NewReplacer(".", "_", "*", "any", ">", "all").Replace(filter)
	if len(readable) > 180 {
		readable = readable[:180]
	}
	return FarmConsumerPrefix + readable + "-" + hex.EncodeToString(sum[:4])
}

// EnsureFarm creates (or updates) the FARM stream and the PROVENIX_FARM
// bucket. It is idempotent. o is EnsureStreams' (MaxAge bounds how long
// a request waits for a worker).
func (c *Conn) EnsureFarm(ctx context.Context, o StreamOptions) error {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Replicas == 0 {
		o.Replicas = c.DefaultReplicas()
	}
	ctx, cancel := withDefaultTimeout(ctx, PublishTimeout)
	defer cancel()
	// WorkQueue: a request is work for one worker, done once acked.
	requests := messageStream(o, StreamFarm, "Provenix farm build requests, one work queue per tenant, system and feature class", subjectFarmBuild+".>")
	requests.Retention = jetstream.WorkQueuePolicy
	requests.Duplicates = min(farmDuplicates, o.MaxAge)
	requests.MaxMsgSize = MaxFarmMsgSize + resultHeaderAllowance
	// Limits: a report is handled by one scheduler and kept for the
	// statistics.
	reports := messageStream(o, StreamFarmReports, "Provenix farm workers' reports: outcome, CPU and wall time of each build", subjectFarmReport+".>")
	reports.MaxAge = o.MaxAge * 4
	reports.Duplicates = min(farmDuplicates, o.MaxAge)
	reports.MaxMsgSize = MaxFarmMsgSize + resultHeaderAllowance
	for _, cfg := range []jetstream.StreamConfig{requests, reports} {
		if err := c.ensureStream(ctx, cfg); err != nil {
			return err
		}
	}
	return c.ensureFarmBucket(ctx, jetstream.KeyValueConfig{Bucket: BucketFarm, Description: "Provenix farm build sets: definitions and state",
		History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas, TTL: o.MaxAge * 4, MaxValueSize: 1 << 20})
}

// ensureFarmBucket makes the farm's bucket as nats.go does, but without
// rollups and purges on its stream (deny_purge): a KV stream
// allows a "Nats-Rollup: all" header on any message, which purges every
// other message of the stream, and publish permissions cannot look at
// headers. A runner, allowed to write claim records only, could
// otherwise wipe every set, node, state and class record with one claim.
// The farm never deletes nor purges a record (they expire by MaxAge).
// Once denied, nats.go's create-or-update of the bucket would ask for
// rollups again, which the server refuses: later changes update the
// stream's own configuration instead.
func (c *Conn) ensureFarmBucket(ctx context.Context, cfg jetstream.KeyValueConfig) error {
	name := kvStreamPrefix + cfg.Bucket
	want := jetstream.StreamConfig{Name: name, Storage: cfg.Storage, Replicas: cfg.Replicas, MaxAge: cfg.TTL,
		MaxMsgSize: cfg.MaxValueSize, Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardNew}
	hardened := func(got jetstream.StreamConfig) bool { return got.DenyPurge && !got.AllowRollup }
	// The stream nats.go's CreateKeyValue makes, rollups and purges off.
	create := func(ctx context.Context) (jetstream.Stream, error) {
		s := want
		s.Description, s.Subjects, s.MaxMsgsPerSubject = cfg.Description, []string{kvSubjectPrefix + cfg.Bucket + ".>"}, int64(max(cfg.History, 1))
		s.MaxBytes, s.MaxMsgs, s.MaxConsumers, s.Duplicates = -1, -1, -1, duplicateWindow(cfg.TTL)
		s.DenyDelete, s.DenyPurge, s.AllowDirect = true, true, true
		return c.js.CreateStream(ctx, s)
	}
	return c.ensureHardened(ctx, cfg.Bucket, want, hardened, create,
		func(got *jetstream.StreamConfig) {
			got.Description, got.Replicas, got.MaxAge, got.MaxMsgSize = cfg.Description, cfg.Replicas, cfg.TTL, cfg.MaxValueSize
			got.AllowRollup, got.DenyPurge = false, true
		})
}

// farmStreamOf is the stream of a farm subject.
func farmStreamOf(subj string) string {
	if strings.HasPrefix(subj, subjectFarmReport+".") {
		return StreamFarmReports
	}
	return StreamFarm
}

// PublishFarm publishes data on subj (a farm subject) with msgID as its
// Nats-Msg-Id, retrying through leader elections as PublishResult does.
// seq is the message's stream sequence; duplicate is true when the
// stream already had msgID within its duplicate window (1 h): the
// message is stored once, and seq is the first one's.
func (c *Conn) PublishFarm(ctx context.Context, subj, msgID string, data []byte) (seq uint64, duplicate bool, err error) {
	if !strings.HasPrefix(subj, subjectFarm+".") {
		return 0, false, fmt.Errorf("queue: publish farm: %w: subject %q is not under %s.", ErrInvalidName, subj, subjectFarm)
	}
	if msgID == "" {
		return 0, false, errors.New("queue: publish farm: empty message id")
	}
	if len(data) > MaxFarmMsgSize {
		return 0, false, fmt.Errorf("queue: publish farm %s: %w: %d bytes, limit %d", subj, ErrTooLarge, len(data), MaxFarmMsgSize)
	}
	if strings.HasPrefix(subj, subjectFarmBuild+".") {
		// A tenant's runners may not create the consumer they take
		// requests from: the publisher provides it.
		want, err := farmConsumerConfig(&ConsumerOptions{FilterSubject: subj})
		if err != nil {
			return 0, false, err
		}
		if err := c.provideForPublish(ctx, StreamFarm, want); err != nil {
			return 0, false, fmt.Errorf("queue: publish farm %s: %w", subj, err)
		}
	}
	ack, err := c.publishRetry(ctx, subj, data, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(farmStreamOf(subj)))
	if err != nil {
		return 0, false, fmt.Errorf("queue: publish farm %s: %w", subj, err)
	}
	return ack.Sequence, ack.Duplicate, nil
}

// farmConsumerConfig is the shared consumer of o.FilterSubject; it validates
// o and sets its defaults.
func farmConsumerConfig(o *ConsumerOptions) (jetstream.ConsumerConfig, error) {
	if !strings.HasPrefix(o.FilterSubject, subjectFarm+".") || strings.ContainsAny(o.FilterSubject, `/\`) {
		return jetstream.ConsumerConfig{}, fmt.Errorf("queue: consume farm: %w: filter subject %q is not a farm subject", ErrInvalidName, o.FilterSubject)
	}
	if err := o.validateLimits(); err != nil {
		return jetstream.ConsumerConfig{}, fmt.Errorf("queue: consume farm: %w", err)
	}
	return o.consumerConfig(FarmConsumer(o.FilterSubject), "Provenix farm: "+o.FilterSubject), nil
}

// FarmRequestQueued reports whether the farm request stored at seq is
// still in the FARM work queue: not acknowledged by a worker (it waits,
// or a worker has it), nor expired; and if so, when the server stored
// it, which is since when it has been queued (a message leaves a work
// queue for good). Read from the stream's leader.
func (c *Conn) FarmRequestQueued(ctx context.Context, seq uint64) (stored time.Time, queued bool, err error) {
	m, err := c.leaderGet(ctx, StreamFarm, seq, "")
	if errors.Is(err, ErrNotFound) {
		return time.Time{}, false, nil
	} else if err != nil {
		return time.Time{}, false, fmt.Errorf("queue: farm request %d: %w", seq, err)
	}
	return m.Time, true, nil
}

// FarmRequestDelivered reports whether the request stored at seq on
// subject (a FarmBuildSubject) has been delivered to a worker at least
// once: its consumer, FarmConsumer(subject), delivered that far. A
// request still queued and delivered is held by a worker, or waits to
// come back to one; one not delivered waits for a worker. False when no
// worker has consumed the subject yet.
func (c *Conn) FarmRequestDelivered(ctx context.Context, subject string, seq uint64) (bool, error) {
	ctx, cancel := withDefaultTimeout(ctx, DefaultTimeout)
	defer cancel()
	name := FarmConsumer(subject)
	var info *jetstream.ConsumerInfo
	err := c.denyAware(ctx, jsAPIFor(StreamFarm, name), func(ctx context.Context) error {
		cons, err := c.js.Consumer(ctx, StreamFarm, name)
		if err != nil {
			return err
		}
		info = cons.CachedInfo()
		return nil
	})
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("queue: farm consumer of %s: %w", subject, mapJSError(err))
	}
	return seq <= info.Delivered.Stream, nil
}

// ConsumeFarm runs h on the messages of one farm filter subject (a
// FarmBuildSubject, or FarmReportFilter) through its shared durable
// consumer, FarmConsumer(filter), created or updated on FARM with
// explicit acks. o works as for ConsumeRebuilds: FilterSubject is
// required, Group must be empty. Outcomes are ConsumeResults'.
//
// A tenant's runner may not create or update a build subject's
// consumer: it uses the one the scheduler provided (ProvideFarmConsumer)
// as it is, its AckWait included (Delivery.AckWait), and gets
// ErrNoConsumer before the first request on the subject (AwaitConsumer
// waits for it).
func (c *Conn) ConsumeFarm(ctx context.Context, o ConsumerOptions, h Handler) (*Consumer, error) {
	if h == nil {
		return nil, errors.New("queue: consume farm: nil handler")
	}
	if o.Group != "" {
		return nil, fmt.Errorf("queue: consume farm: Group %q: must be empty, the consumer is named after the subject", o.Group)
	}
	want, err := farmConsumerConfig(&o)
	if err != nil {
		return nil, err
	}
	k, err := c.consume(ctx, farmStreamOf(o.FilterSubject), want, o.Concurrency, c.log.With(logKeySubject, o.FilterSubject), h,
		strings.HasPrefix(o.FilterSubject, subjectFarmBuild+"."))
	if err != nil {
		return nil, fmt.Errorf("queue: consume farm: %w", err)
	}
	return k, nil
}

// ConsumeEvents runs h on the pushers' events (events.<tenant>.<kind>,
// every tenant: publications, rejections) through the durable consumer
// FarmConsumerPrefix+"events-"+o.Group, which the schedulers of a group
// share: each event goes to one of them. A new group starts with the
// events published from then on (a scheduler recomputes the past from
// the cache). Outcomes are ConsumeResults'.
func (c *Conn) ConsumeEvents(ctx context.Context, o ConsumerOptions, h Handler) (*Consumer, error) {
	if h == nil {
		return nil, errors.New("queue: consume events: nil handler")
	}
	if o.FilterSubject != "" {
		return nil, errors.New("queue: consume events: FilterSubject must be empty")
	}
	if err := ValidToken(o.Group); err != nil || strings.ContainsAny(o.Group, `/\`) {
		return nil, fmt.Errorf("queue: consume events: %w: group %q", ErrInvalidName, o.Group)
	}
	if err := o.validateLimits(); err != nil {
		return nil, fmt.Errorf("queue: consume events: %w", err)
	}
	want := jetstream.ConsumerConfig{
		Durable:       FarmConsumerPrefix + "events-" + o.Group,
		Description:   "Provenix farm schedulers of group " + o.Group,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		FilterSubject: FarmEventsFilter,
		AckWait:       o.AckWait,
		MaxDeliver:    o.MaxDeliver,
		MaxAckPending: o.MaxAckPending,
	}
	k, err := c.consume(ctx, StreamEvents, want, o.Concurrency, c.log.With(logKeyGroup, o.Group), h, false)
	if err != nil {
		return nil, fmt.Errorf("queue: consume events: %w", err)
	}
	return k, nil
}

// ReadFarmReports calls fn with every report stored since since, oldest
// first, and returns once it has seen those stored when it started: the
// farm's statistics over a window. It reads with an ordered consumer,
// which leaves nothing behind on the server.
func (c *Conn) ReadFarmReports(ctx context.Context, since time.Time, fn func(subject string, data []byte) error) error {
	if err := c.readSince(ctx, StreamFarmReports, "", since, fn); err != nil {
		return fmt.Errorf("queue: read farm reports: %w", err)
	}
	return nil
}

// ReadEvents calls fn with tenant's events of kind (EventDisputed, …)
// stored since since, oldest first, as ReadFarmReports does for reports.
// The events stream keeps them StreamOptions.MaxAge: a window reaching
// further back sees only what is left.
func (c *Conn) ReadEvents(ctx context.Context, tenant, kind string, since time.Time, fn func(data []byte) error) error {
	subj, err := EventsSubject(tenant, kind)
	if err != nil {
		return fmt.Errorf("queue: read events: %w", err)
	}
	err = c.readSince(ctx, StreamEvents, subj, since, func(_ string, data []byte) error { return fn(data) })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // no pusher ran yet: no events
	}
	if err != nil {
		return fmt.Errorf("queue: read events %s: %w", subj, err)
	}
	return nil
}

// readSince calls fn with the messages of stream (those on filter when
// it is set) stored since since, oldest first, with an ordered consumer,
// and returns once it has read the last one stored when it started.
func (c *Conn) readSince(ctx context.Context, stream, filter string, since time.Time, fn func(subject string, data []byte) error) error {
	ctx, cancel := withDefaultTimeout(ctx, PublishTimeout)
	defer cancel()
	st, err := c.js.Stream(ctx, stream)
	if err != nil {
		return mapJSError(err)
	}
	var opts []jetstream.StreamInfoOpt
	if filter != "" {
		opts = append(opts, jetstream.WithSubjectFilter(filter))
	}
	info, err := st.Info(ctx, opts...)
	if err != nil {
		return mapJSError(err)
	}
	// Info with a subject filter lists the subjects that match it (a
	// wildcard filter, as ReadUsage's, matches several).
	if info.State.Msgs == 0 || info.State.LastTime.Before(since) || (filter != "" && len(info.State.Subjects) == 0) {
		return nil
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	var cons jetstream.Consumer
	err = c.denyAware(ctx, jsAPIFor(stream, ""), func(ctx context.Context) (err error) {
		cons, err = st.OrderedConsumer(ctx, cfg)
		return err
	})
	if err != nil {
		return mapJSError(err)
	}
	// Without a filter the stream's last sequence is the last to read;
	// with one, the delivered messages' pending count says (the stream's
	// last message may be on another subject).
	last := info.State.LastSeq
	for first := true; ; first = false {
		// The first fetch does not wait: when nothing was stored since
		// since (older messages on filter only), the consumer says so at
		// once (none pending) instead of after the fetch's wait.
		var batch jetstream.MessageBatch
		if first {
			batch, err = cons.FetchNoWait(256)
		} else {
			batch, err = cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		}
		if err != nil {
			return err
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return err
			}
			if err := fn(msg.Subject(), msg.Data()); err != nil {
				return err
			}
			if md.Sequence.Stream >= last || (filter != "" && md.NumPending == 0) {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			// Nothing came: nothing on filter was stored since since (the
			// consumer had none pending when made), the messages up to
			// last aged out meanwhile, or the server does not answer this
			// user's fetches (a permission it lacks gets no answer at all).
			if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 {
				return nil
			}
			if first {
				continue
			}
			if info, err := st.Info(ctx); err == nil && info.State.FirstSeq > last {
				return nil
			}
			return fmt.Errorf("no messages delivered up to %d (is fetching from %s allowed?)", last, stream)
		}
	}
}

// DecodeFarmMessage parses and validates a farm message (a request, a
// report) as the other wire messages are: at most MaxFarmMsgSize bytes,
// unknown fields and trailing data refused (ErrMalformed, ErrTooLarge),
// then P's Validate.
func DecodeFarmMessage[T any, P interface {
	*T
	Validate() error
}](data []byte, what string) (*T, error) {
	return decodeMessage[T, P](data, what, MaxFarmMsgSize)
}

// farmRunner adds to a runner user's permissions what a farm worker
// does in its tenant's account: consume the tenant's build requests,
// publish its own builder's reports (FarmReportSubject of builderID:
// it cannot report in another builder's name), read the farm's bucket
// (sets, states, classes: KV gets and watches), write claim records
// (claim.<set>.<drv>, the worker's compare-and-set) and no other
// record, and read the builders' reputation (its standing). A runner is
// any builder of the tenant, volunteers included, so it may not write
// set, node, state or class records: those would let one bad builder
// cancel a set, or mark a derivation failed or blocked, and so stall
// every set of its tenant. Claim records cannot be scoped (one record
// per derivation, compare-and-set by every worker): a runner can still
// take a request and not build it, or rewrite a claim record (drop
// another's claim: a replica built twice; hold a replica in anyone's
// name: it waits), but its reports count under its own builder id
// only, and the scheduler counts one failure per builder and
// derivation, so it cannot fail a derivation by itself; every result
// still goes through the pusher's checks.
func farmRunner(tenant, builderID string, pub *[]string, use, readStream, orderedReads func(stream string)) {
	// Build requests, through the consumers the scheduler provides.
	use(StreamFarm)
	report, _ := FarmReportSubject(tenant, builderID)
	// Claims under its own builder's key only (claim.<set>.<drv>.<scope>):
	// no runner can write, move or drop another builder's claim.
	*pub = append(*pub, report, kvSubjectPrefix+BucketFarm+"."+FarmClaimPrefix+".*.*."+StagingScope(builderID))
	readStream(kvStreamPrefix + BucketFarm)
	readLatest(pub, kvStreamPrefix+BucketFarm)
	orderedReads(kvStreamPrefix + BucketFarm)
	readStream(kvStreamPrefix + BucketBuilders)
	// farm stats: the reports, and every builder's reputation, read with
	// ordered consumers.
	orderedReads(kvStreamPrefix + BucketBuilders)
	readReports(pub, orderedReads)
	readDisputes(tenant, pub)
}

// Record key prefixes of BucketFarm: package farm names its records with
// them, and each role's permissions say which it may write.
const (
	FarmClaimPrefix = "claim"
	FarmSetPrefix   = "set"
	FarmNodePrefix  = "node"
	FarmStatePrefix = "state"
	FarmClassPrefix = "class"
)

// SubmitterBuilderID is the builder id whose staging scope tenant's
// submitter user stages build sets' .drv closures in (`provenix submit
// --builder-id`): its own, so that no runner can replace a closure.
func SubmitterBuilderID(tenant string) string { return tenant + "-submitter" }

// farmSubmitter adds to a submitter user's permissions what Submit,
// StageClosure, Cancel, GetStatus, Summaries and Follow do: write a set's
// set, node, state and class records, stage in its own scope, and read
// the bucket (KV gets and watches).
func farmSubmitter(tenant string, pub *[]string, readStream, orderedReads func(stream string)) {
	for _, p := range []string{FarmSetPrefix, FarmNodePrefix, FarmStatePrefix, FarmClassPrefix + "." + tenant} {
		*pub = append(*pub, kvSubjectPrefix+BucketFarm+"."+p+".>")
	}
	readStream(kvStreamPrefix + BucketFarm)
	orderedReads(kvStreamPrefix + BucketFarm)
	*pub = append(*pub, stagingChunksPrefix+StagingScope(SubmitterBuilderID(tenant))+".>", stagingMetaPrefix+">")
	readStream(stagingStream)
}

// readDisputes is what ReadEvents needs for the tenant's disputes (farm
// stats counts each builder's causes).
func readDisputes(tenant string, pub *[]string) {
	readFiltered(StreamEvents, subjectEvents+"."+tenant+"."+EventDisputed, pub)
}

// readFiltered is what readSince needs to read stream's messages on
// filter, and no others: an ordered consumer on filter only, pulled with
// fetches.
func readFiltered(stream, filter string, pub *[]string) {
	*pub = append(*pub,
		jsAPI+"STREAM.INFO."+stream,
		jsAPI+"CONSUMER.CREATE."+stream+".*."+filter,
		jsAPI+"CONSUMER.DELETE."+stream+".*",
		jsAPI+"CONSUMER.MSG.NEXT."+stream+".*",
		jsFlowCtl+stream+".>")
}

// readReports is what ReadFarmReports needs: an ordered consumer pulled
// with fetches.
func readReports(pub *[]string, orderedReads func(stream string)) {
	*pub = append(*pub, jsAPI+"STREAM.INFO."+StreamFarmReports, jsAPI+"CONSUMER.MSG.NEXT."+StreamFarmReports+".*")
	orderedReads(StreamFarmReports)
}

// farmPusher adds to a pusher user's permissions what the farm's
// scheduler does (`provenix up` runs one): EnsureFarm, the tenant's
// build requests, the publication events and the reports (ConsumeEvents,
// ConsumeFarm of reports, ReadFarmReports), and the farm's bucket.
func farmPusher(tenant string, pub *[]string, consume func(stream, filter string), readStream, orderedReads func(stream string)) {
	for _, s := range []string{StreamFarm, StreamFarmReports, kvStreamPrefix + BucketFarm} {
		*pub = append(*pub, jsAPI+"STREAM.CREATE."+s, jsAPI+"STREAM.UPDATE."+s, jsAPI+"STREAM.INFO."+s)
	}
	*pub = append(*pub, subjectFarmBuild+"."+tenant+".>", kvSubjectPrefix+BucketFarm+".>")
	consume(StreamEvents, FarmEventsFilter)
	consume(StreamFarmReports, subjectFarmReport+".>")
	readReports(pub, orderedReads)
	readDisputes(tenant, pub)
	readStream(kvStreamPrefix + BucketFarm)
	readLatest(pub, kvStreamPrefix+BucketFarm)
	orderedReads(kvStreamPrefix + BucketFarm)
	// Whether a request is still queued (FarmRequestQueued), and
	// delivered (FarmRequestDelivered).
	readLatest(pub, StreamFarm)
	*pub = append(*pub, jsAPI+"CONSUMER.INFO."+StreamFarm+".*")
}

// readLatest lets a user read stream's messages from its leader
// (KVGetLatest): the farm's claims are read that way.
func readLatest(pub *[]string, stream string) {
	*pub = append(*pub, jsAPI+"STREAM.MSG.GET."+stream)
}
