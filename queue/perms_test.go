package queue

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestRolePermissions(t *testing.T) {
	runner, err := RunnerPermissions("acme", "acme-runner")
	if err != nil {
		t.Fatal(err)
	}
	pusher, err := RolePermissions("acme", RolePusher)
	if err != nil {
		t.Fatal(err)
	}
	submitter, err := RolePermissions("acme", RoleSubmitter)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RunnerPermissions("acme", SubmitterBuilderID("acme")); err == nil {
		t.Error("a runner user with the submitter's builder id (its staging scope): permitted")
	}
	for _, c := range []struct {
		name string
		p    Permissions
		subj string
		want bool
	}{
		{"runner publishes its results", runner, "results.acme.>", true},
		{"runner consumes results", runner, "$JS.API.CONSUMER.CREATE.RESULTS.*.results.acme.>", false},
		{"runner writes the votes", runner, "$KV.PROVENIX_VOTES.>", false},
		{"runner publishes to inboxes", runner, "_INBOX.>", false},
		{"pusher consumes its results", pusher, "$JS.API.CONSUMER.CREATE.RESULTS.*.results.acme.>", true},
		{"pusher publishes results", pusher, "results.acme.>", false},
		{"pusher stages", pusher, stagingChunksPrefix + ">", false},
		{"runner stages in its scope", runner, stagingChunksPrefix + StagingScope("acme-runner") + ".>", true},
		{"runner stages anywhere", runner, stagingChunksPrefix + ">", false},
		{"runner stages in the submitter's scope", runner, stagingChunksPrefix + StagingScope(SubmitterBuilderID("acme")) + ".>", false},
		{"runner purges staging", runner, "$JS.API.STREAM.PURGE." + stagingStream, false},
		{"pusher publishes to inboxes", pusher, "_INBOX.>", false},
		{"runner takes its tenant's farm requests", runner, "$JS.API.CONSUMER.MSG.NEXT.FARM.*", true},
		// One that could create or update the shared consumer could
		// stall every request of its subject (MaxAckPending 1, or a
		// consumer of its own taking the subject).
		{"runner creates or changes the farm's consumers", runner, "$JS.API.CONSUMER.CREATE.FARM.*.farm.build.acme.>", false},
		{"runner creates or changes the rebuild consumers", runner, "$JS.API.CONSUMER.CREATE.REBUILD.*.rebuild.acme.*", false},
		{"runner takes its tenant's rebuild requests", runner, "$JS.API.CONSUMER.MSG.NEXT.REBUILD.*", true},
		{"runner reads its own votes", runner, "$JS.API.DIRECT.GET.KV_PROVENIX_VOTES.$KV.PROVENIX_VOTES.acme.*." + StagingScope("acme-runner"), true},
		{"runner reads any vote", runner, "$JS.API.DIRECT.GET.KV_PROVENIX_VOTES.>", false},
		{"pusher provides the farm's consumers", pusher, "$JS.API.CONSUMER.CREATE.FARM.*.farm.build.acme.>", true},
		{"pusher provides the rebuild consumers", pusher, "$JS.API.CONSUMER.CREATE.REBUILD.*.rebuild.acme.*", true},
		{"pusher provides another tenant's rebuild consumers", pusher, "$JS.API.CONSUMER.CREATE.REBUILD.*.rebuild.other.*", false},
		{"runner reports its own farm builds", runner, "farm.report.acme." + StagingScope("acme-runner"), true},
		{"runner reports farm builds of any builder", runner, "farm.report.acme.>", false},
		{"runner reports farm builds unscoped", runner, "farm.report.acme", false},
		{"runner reports another builder's farm builds", runner, "farm.report.acme." + StagingScope("acme-other"), false},
		{"runner publishes farm requests", runner, "farm.build.acme.>", false},
		{"runner makes the farm's streams", runner, "$JS.API.STREAM.CREATE.FARM", false},
		{"pusher publishes farm requests", pusher, "farm.build.acme.>", true},
		{"pusher makes the farm's streams", pusher, "$JS.API.STREAM.CREATE.FARM", true},
		{"pusher follows the events", pusher, "$JS.API.CONSUMER.CREATE.EVENTS.*.events.>", true},
		{"runner claims farm requests", runner, "$KV.PROVENIX_FARM.claim.*.*." + StagingScope("acme-runner"), true},
		{"runner claims in any builder's name", runner, "$KV.PROVENIX_FARM.claim.>", false},
		{"runner writes any farm record", runner, "$KV.PROVENIX_FARM.>", false},
		{"runner writes farm sets", runner, "$KV.PROVENIX_FARM.set.>", false},
		{"runner writes farm states", runner, "$KV.PROVENIX_FARM.state.>", false},
		{"pusher writes any farm record", pusher, "$KV.PROVENIX_FARM.>", true},
		{"submitter writes farm sets", submitter, "$KV.PROVENIX_FARM.set.>", true},
		{"submitter writes farm nodes", submitter, "$KV.PROVENIX_FARM.node.>", true},
		{"submitter writes farm states", submitter, "$KV.PROVENIX_FARM.state.>", true},
		{"submitter writes its tenant's classes", submitter, "$KV.PROVENIX_FARM.class.acme.>", true},
		{"submitter writes claims", submitter, "$KV.PROVENIX_FARM.claim.>", false},
		{"submitter stages in its scope", submitter, stagingChunksPrefix + StagingScope(SubmitterBuilderID("acme")) + ".>", true},
		{"submitter stages in the runner's scope", submitter, stagingChunksPrefix + StagingScope("acme-runner") + ".>", false},
		{"submitter publishes results", submitter, "results.acme.>", false},
		{"submitter publishes farm requests", submitter, "farm.build.acme.>", false},
		{"runner records its own usage", runner, "usage.acme." + StagingScope("acme-runner"), true},
		{"runner records any usage", runner, "usage.acme.>", false},
		{"runner records serving", runner, "usage.acme.serve", false},
		{"runner reads its own usage", runner, "$JS.API.CONSUMER.CREATE.USAGE.*.usage.acme." + StagingScope("acme-runner"), true},
		{"runner reads the tenant's usage", runner, "$JS.API.CONSUMER.CREATE.USAGE.*.usage.acme.>", false},
		{"pusher records serving", pusher, "usage.acme.serve", true},
		{"pusher records builds", pusher, "usage.acme.>", false},
		{"pusher reads the tenant's usage", pusher, "$JS.API.CONSUMER.CREATE.USAGE.*.usage.acme.>", true},
		{"pusher makes the usage stream", pusher, "$JS.API.STREAM.CREATE.USAGE", true},
	} {
		if got := slices.Contains(c.p.Publish, c.subj); got != c.want {
			t.Errorf("%s (%s): %v, want %v", c.name, c.subj, got, c.want)
		}
	}
	// A volunteer hears of the disputes in its tenant, and of nothing else.
	if !slices.Equal(runner.Subscribe, []string{inboxFilter, "events.acme." + EventDisputed}) {
		t.Errorf("runner subscribes to %v", runner.Subscribe)
	}
	if !slices.Equal(submitter.Subscribe, []string{inboxFilter}) {
		t.Errorf("submitter subscribes to %v", submitter.Subscribe)
	}
	if !slices.Equal(pusher.Subscribe, []string{inboxFilter}) {
		t.Errorf("pusher subscribes to %v", pusher.Subscribe)
	}
	if _, err := RolePermissions("acme", RoleRunner); err == nil {
		t.Error("runner permissions without a builder id")
	}
	if _, err := RunnerPermissions("a.b", "x"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("tenant a.b: %v", err)
	}
	if _, err := RolePermissions("a", "root"); err == nil {
		t.Error("unknown role accepted")
	}
}

func TestDeniedSubject(t *testing.T) {
	for _, c := range []struct {
		text, want string
		ok         bool
	}{
		{`nats: permissions violation: Permissions Violation for Publish to "results.b.x86_64-linux"`, "results.b.x86_64-linux", true},
		{`Permissions Violation for Publish to "$JS.API.CONSUMER.CREATE.RESULTS.pusher-cache.results.b.>"`, "$JS.API.CONSUMER.CREATE.RESULTS.pusher-cache.results.b.>", true},
		{`Permissions Violation for Subscription to "x"`, "", false},
		{`Permissions Violation for Publish to "unterminated`, "", false},
	} {
		got, ok := deniedSubject(c.text)
		if got != c.want || ok != c.ok {
			t.Errorf("deniedSubject(%q) = %q, %v; want %q, %v", c.text, got, ok, c.want, c.ok)
		}
	}
	m := jsAPIFor(StreamResults, "pusher-cache")
	for subj, want := range map[string]bool{
		"$JS.API.CONSUMER.CREATE.RESULTS.pusher-cache.results.b.>": true,
		"$JS.API.CONSUMER.CREATE.RESULTS.pusher-cache":             true,
		"$JS.API.CONSUMER.CREATE.RESULTS.pusher-cache2":            false,
		"$JS.API.CONSUMER.CREATE.EVENTS.pusher-cache":              false,
		"results.RESULTS.pusher-cache":                             false,
	} {
		if m(subj) != want {
			t.Errorf("jsAPIFor(RESULTS, pusher-cache)(%q) = %v", subj, !want)
		}
	}
}

func TestQuotaError(t *testing.T) {
	for code, limit := range map[jetstream.ErrorCode]string{
		10002: "max_file", 10047: "max_file", 10028: "max_mem", 10027: "max_streams", 10026: "max_consumers",
	} {
		err := mapJSError(&jetstream.APIError{ErrorCode: code, Code: 400, Description: "x"})
		if !errors.Is(err, ErrQuotaExceeded) || !strings.Contains(err.Error(), limit) {
			t.Errorf("code %d: %v, want ErrQuotaExceeded naming %s", code, err, limit)
		}
	}
	if err := mapJSError(&jetstream.APIError{ErrorCode: 10059}); errors.Is(err, ErrQuotaExceeded) {
		t.Errorf("stream not found mapped to a quota error: %v", err)
	}
}
