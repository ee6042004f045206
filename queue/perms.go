package queue

import (
	"fmt"
	"slices"
)

// Role is what a NATS user of a tenant's account may do. A tenant has its
// own NATS account (its own JetStream, so RESULTS and the other streams
// exist once per tenant, under the account's limits); inside it each
// program connects as a user whose permissions allow exactly what its
// calls here need, found by running them against a real server.
type Role string

const (
	// RoleRunner builds: PublishResult for its tenant only, Stage under
	// its builder's scope (ScopedKey), what a volunteer needs
	// (ConsumeRebuilds of its tenant, KVGet of votes, OpenStaged), what
	// a farm worker needs (see farmRunner: it writes claim records
	// only, and its own builder's reports), and its own builder's
	// usage records (see
	// usagePermissions). It cannot consume results, write the quorum's
	// KV, submit or cancel farm sets, nor purge or delete staging (a
	// failed upload's chunks are the next upload's or the garbage
	// collector's). See RunnerPermissions.
	RoleRunner Role = "runner"
	// RolePusher publishes the tenant's cache: ConsumeResults with its
	// tenant's filter, OpenStaged, the quorum's KV buckets, events and
	// rebuild requests, the entries waiting for their references, and EnsureStreams (the pusher sets its tenant's
	// streams up at start, as `provenix cache-push` does); and runs the
	// farm's scheduler (see farmPusher); it publishes the cache
	// server's usage records and reads the tenant's (see
	// usagePermissions). It cannot publish results nor write to staging.
	RolePusher Role = "pusher"
	// RoleSubmitter submits, cancels and follows its tenant's farm build
	// sets (`provenix submit`, `provenix farm cancel|status|list`): it
	// writes set, node, state and class records and stages a set's .drv
	// closure in its own staging scope (SubmitterBuilderID); see
	// farmSubmitter. Kept apart from RoleRunner so that a builder, which
	// every volunteer is, cannot cancel or stall the sets of others.
	RoleSubmitter Role = "submitter"
	// RoleAdmin may do anything inside the tenant's account (delete or
	// purge streams, staging garbage collection); nothing outside it.
	RoleAdmin Role = "admin"
)

// Roles are the roles `provenix tenant add` creates users for.
var Roles = []Role{RoleRunner, RolePusher, RoleSubmitter, RoleAdmin}

// Permissions are a NATS user's publish and subscribe allow lists, in
// nats-server's configuration terms; everything else is denied.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// JetStream API and object/KV subject prefixes, as nats.go uses them.
const (
	jsAPI           = "$JS.API."
	jsAck           = "$JS.ACK."
	jsFlowCtl       = "$JS.FC."
	kvSubjectPrefix = "$KV."
	kvStreamPrefix  = "KV_"
	inboxFilter     = "_INBOX.>"
)

// RolePermissions are the permissions of role in tenant's account.
//
// Why each entry is there:
//   - "$JS.API.INFO": nats.go asks for the account's JetStream info.
//   - STREAM.INFO and DIRECT.GET on a stream: bucket handles, Object
//     Store metadata and KV gets (EnsureStreams creates the buckets with
//     direct gets allowed). STREAM.MSG.GET only where a read must come
//     from the leader: the farm's claims (readLatest).
//   - CONSUMER.CREATE.<stream>.<name>.<filter>: nats.go names the filter
//     in the subject, so a pusher can be held to its tenant's results and
//     a volunteer to its tenant's rebuilds. Object Store reads and KV
//     watches create ordered consumers (and delete them on a reset).
//   - $JS.ACK.<stream>.> acknowledges, $JS.FC.<stream>.> answers an
//     ordered consumer's flow control.
//   - _INBOX.> (subscribe only): replies to the calls above. No role may
//     publish to an inbox, so none can forge a reply to another.
//
// RoleRunner needs the builder id its user stages for: use
// RunnerPermissions.
func RolePermissions(tenant string, role Role) (Permissions, error) {
	if role == RoleRunner {
		return Permissions{}, fmt.Errorf("queue: permissions: %s: a runner user stages for one builder id (RunnerPermissions)", role)
	}
	return rolePermissions(tenant, role, "")
}

// RunnerPermissions are RoleRunner's permissions in tenant's account for
// a user that builds as builderID: it may write staged chunks in that
// builder's scope only (StagingScope), so no other runner user can
// replace or corrupt what it staged under a ScopedKey, and publish
// usage records and farm reports on that builder's subjects only
// (UsageSubject, FarmReportSubject), so none can speak for another;
// builderID may not be the submitter's (SubmitterBuilderID). Metas cannot be
// scoped by permission (see staging_scope.go): readers of scoped keys
// ignore them.
func RunnerPermissions(tenant, builderID string) (Permissions, error) {
	if builderID == "" {
		return Permissions{}, fmt.Errorf("queue: permissions: %s: no builder id", RoleRunner)
	}
	if builderID == SubmitterBuilderID(tenant) {
		// The runner would share the submitter's staging scope, and
		// could replace the closures of the sets it builds.
		return Permissions{}, fmt.Errorf("queue: permissions: %s: builder id %q is the submitter's staging scope", RoleRunner, builderID)
	}
	return rolePermissions(tenant, RoleRunner, builderID)
}

func rolePermissions(tenant string, role Role, builderID string) (Permissions, error) {
	if err := ValidToken(tenant); err != nil {
		return Permissions{}, fmt.Errorf("queue: permissions: tenant: %w", err)
	}
	kvVotes, kvBuilders, kvWaiting := kvStreamPrefix+BucketVotes, kvStreamPrefix+BucketBuilders, kvStreamPrefix+BucketWaiting
	var pub []string
	readStream := func(stream string) {
		pub = append(pub, jsAPI+"STREAM.INFO."+stream, jsAPI+"DIRECT.GET."+stream+".>")
	}
	// Scoped staged objects are read chunk by chunk with direct gets
	// "next by subject", whose request names the stream alone.
	readChunks := func() { pub = append(pub, jsAPI+"DIRECT.GET."+stagingStream) }
	orderedReads := func(stream string) {
		pub = append(pub,
			jsAPI+"CONSUMER.CREATE."+stream+".>",
			jsAPI+"CONSUMER.DELETE."+stream+".*",
			jsFlowCtl+stream+".>")
	}
	// use is what pulling from stream's consumers takes; consume adds
	// creating them for filter. A runner may only use a work queue's
	// shared consumer, which its publisher provides (provideForPublish):
	// one that could create it could also set it to stall every request
	// of its subject for everyone.
	use := func(stream string) {
		pub = append(pub,
			jsAPI+"CONSUMER.INFO."+stream+".*",
			jsAPI+"CONSUMER.MSG.NEXT."+stream+".*",
			jsAck+stream+".>")
	}
	consume := func(stream, filter string) {
		pub = append(pub, jsAPI+"CONSUMER.CREATE."+stream+".*."+filter)
		use(stream)
	}
	provide := func(stream, filter string) {
		// Creating; and reading and resuming one made before
		// (repairConsumer).
		pub = append(pub, jsAPI+"CONSUMER.CREATE."+stream+".*."+filter, jsAPI+"CONSUMER.INFO."+stream+".*", jsAPI+"CONSUMER.PAUSE."+stream+".*")
	}
	switch role {
	case RoleRunner:
		pub = append(pub, jsAPI+"INFO", ResultsFilter(tenant),
			// Stage: chunks in its builder's scope, and metas (one
			// subject token each: no narrower rule is possible). No
			// purge: readers take a scoped key's last upload, and older
			// ones expire.
			stagingChunksPrefix+StagingScope(builderID)+".>", stagingMetaPrefix+">")
		readStream(stagingStream)
		readChunks()
		orderedReads(stagingStream)
		// A volunteer: its tenant's rebuild requests, and whether it
		// voted: its own votes only. Another builder's pending vote
		// would tell it the NAR hash, size and references to vote
		// without building.
		use(StreamRebuild)
		pub = append(pub, jsAPI+"STREAM.INFO."+kvVotes,
			jsAPI+"DIRECT.GET."+kvVotes+"."+kvSubjectPrefix+BucketVotes+"."+tenant+".*."+StagingScope(builderID))
		farmRunner(tenant, builderID, &pub, use, readStream, orderedReads)
		usagePermissions(tenant, builderID, role, &pub)
	case RolePusher:
		pub = append(pub, jsAPI+"INFO", subjectEvents+"."+tenant+".>", subjectRebuild+"."+tenant+".>")
		for _, s := range []string{StreamResults, StreamEvents, StreamRebuild, stagingStream, kvVotes, kvBuilders, kvWaiting} {
			pub = append(pub, jsAPI+"STREAM.CREATE."+s, jsAPI+"STREAM.UPDATE."+s)
		}
		pub = append(pub, jsAPI+"STREAM.INFO."+StreamResults, jsAPI+"STREAM.INFO."+StreamEvents, jsAPI+"STREAM.INFO."+StreamRebuild)
		consume(StreamResults, ResultsFilter(tenant))
		readStream(stagingStream)
		readChunks()
		orderedReads(stagingStream)
		for _, kv := range []string{BucketVotes, BucketBuilders, BucketWaiting} {
			readStream(kvStreamPrefix + kv)
			orderedReads(kvStreamPrefix + kv)
			pub = append(pub, kvSubjectPrefix+kv+".>")
		}
		// The rebuild requests' and farm requests' consumers, which
		// their runners may not create.
		provide(StreamRebuild, subjectRebuild+"."+tenant+".*")
		provide(StreamFarm, subjectFarmBuild+"."+tenant+".>")
		farmPusher(tenant, &pub, consume, readStream, orderedReads)
		usagePermissions(tenant, "", role, &pub)
	case RoleSubmitter:
		pub = append(pub, jsAPI+"INFO")
		farmSubmitter(tenant, &pub, readStream, orderedReads)
	case RoleAdmin:
		return Permissions{Publish: []string{">"}, Subscribe: []string{">"}}, nil
	default:
		return Permissions{}, fmt.Errorf("queue: permissions: unknown role %q (want one of %v)", role, Roles)
	}
	slices.Sort(pub)
	sub := []string{inboxFilter}
	if role == RoleRunner {
		// A volunteer logs the disputes its builds are in (with what
		// differs), so that its operator can fix them.
		sub = append(sub, subjectEvents+"."+tenant+"."+EventDisputed)
	}
	return Permissions{Publish: slices.Compact(pub), Subscribe: sub}, nil
}
