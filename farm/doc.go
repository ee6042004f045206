// Package farm schedules build sets on workers: a set of derivations
// (a chain, a mass rebuild) submitted from anywhere is dispatched, each
// derivation once every output it needs from its inputs is visible in
// the cache, to workers able to build it.
//
// The parts, in the order a set goes through them:
//   - Graph (graph.go, read.go): the .drv closure of the roots, read with
//     go-nix's parser and checked against its paths; per derivation its
//     outputs, inputs (with the outputs used), system and
//     requiredSystemFeatures. Graph.DependentsOf selects a mass rebuild.
//   - Machine (match.go): what a worker builds, matched as Nix and Hydra
//     do (system or extra-platforms or builtin; required features
//     supported; mandatory features required). FeatureClass names the
//     subject a derivation's requests go to.
//   - Submit (submit.go): looks every output up in the Cache (the
//     Provenix cache, then declared upstreams), writes each derivation's
//     definition and state, and last the set record. StageClosure stages
//     the .drv closure export for the workers.
//   - Scheduler (scheduler.go, dispatch.go, resync.go): follows the
//     pushers' events (publications make outputs visible; a rejection
//     fails the replica that built it) and the workers' reports
//     (failures), dispatches, retries on other builders, dispatches
//     more replicas of a derivation whose builders disagree (the
//     pushers' dispute events: nothing is published until some agree), blocks
//     dependents of what failed for good, recomputes everything from
//     the bucket and the cache when it starts and at intervals (Resync),
//     and then sends again a request a worker dropped without a build
//     (requeue).
//   - Worker (worker.go): consumes the feature classes its Machine can
//     build, claims each request (unless its Skip leaves it to others), builds it with a BuildFunc
//     (volunteer.FarmBuild builds with Nix) and reports the outcome.
//     A build stopped by the worker's context (shutdown, or a runner
//     daemon taking its machine back for a forge job) reports nothing
//     and its request is released at once for another worker.
//
// Adaptive replication: the N replicas of a quorum-N derivation are
// dispatched at once, and the pushers decide when enough agree (their
// policy lets a veteran's vote count twice, quorum.trusted_after). Once
// the outputs are visible the derivation is done: a replica nobody has
// claimed yet is dropped at its claim, and one being built is withdrawn
// (a running build checks every Worker.WithdrawCheck that it is still
// needed), so a veteran's build costs the farm one build, not N.
//   - GetStatus, Cancel (status.go) and ReadStats (stats.go) read a set
//     and the farm's work (with each builder's disputes by cause, from
//     the pushers' disputed events).
//
// Where state lives (queue/farm.go names the streams and the bucket):
//   - a set's definition is written once in PROVENIX_FARM at submission
//     (set.<id>, node.<id>.<hash>, class.<tenant>.<system>.<class>);
//   - each derivation's state (waiting, dispatched, done, failed,
//     blocked) is a record of its own (state.<id>.<hash>), only ever
//     changed with compare-and-set;
//   - each builder's claim on a derivation (claim.<id>.<hash>.<scope>,
//     claim.go), written by that builder only, records which replica it
//     holds, so a quorum of N goes to N distinct owners and a replica is
//     built once;
//   - requests wait in the FARM work queue
//     (farm.build.<tenant>.<system>.<class>), reports in FARM_REPORTS
//     (farm.report.<tenant>.<scope>, each on its builder's subject:
//     DecodeReport refuses one naming another builder).
//
// What one bad builder can do: runners may write their own builder's
// claims only (queue's farmRunner), so a builder cannot mark a
// derivation failed, nor claim, report, move or drop a claim in another
// builder's name; its reports count under its own builder id only; and
// the scheduler counts one failure per builder and derivation (failed),
// and a worker ignores the claims of a builder that failed it (claim),
// so a builder that claims and fails a derivation again and again fails
// it once, like an honest one. A claim that holds a replica while
// nobody builds it holds it for Worker.ClaimTimeout at most (claim). A
// request dropped unbuilt, or kept in progress for good, is sent again
// past its builder (Scheduler.requeue).
//
// Nothing a scheduler decides lives only in its memory: it caches set
// definitions (they do not change), and recomputes state from the bucket
// and the cache when it starts and at intervals. (What it keeps in
// memory is when it first saw a request gone, for requeue's waits on it,
// RequeueAfter and BuiltTimeout; a restart starts those again. The waits
// on a request kept in progress, HoldTimeout, run from the server's and
// the state's times: State.Held.) A request is published
// before the state says so, with a Nats-Msg-Id naming the set,
// derivation, replica and attempt: a scheduler that dies in between, or
// two schedulers doing the same, publish one message, and the next
// resync finishes the state change. Past the stream's duplicate window
// the claims still keep a replica from being built twice: the second
// message is held while the first is built, and dropped by its builder
// once built, or taken over after Worker.ClaimTimeout.
package farm
