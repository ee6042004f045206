package main

import (
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testqueue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/usage"
)

// TestUsageCommand: 'provenix usage' sums the records on NATS by the
// grouping asked for, as a table, CSV and JSON; bad flags are usage
// errors.
func TestUsageCommand(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	srv, qc := testqueue.Embedded(t, natsserver.Config{})
	pub, err := usage.NewPublisher(qc)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for _, r := range []*usage.Record{
		{Kind: usage.KindJob, Tenant: "a", Builder: "r1", Forge: "http://forge-a", Repository: "alice/pkgs", Start: now.Add(-time.Minute), End: now, CPUMicros: 30e6, BytesBuilt: 1000},
		{Kind: usage.KindJob, Tenant: "b", Builder: "r1", Forge: "http://forge-b", Repository: "bob/os", Start: now.Add(-2 * time.Minute), End: now, CPUMicros: 90e6, BytesBuilt: 5},
		{Kind: usage.KindServe, Tenant: "a", Reader: "alice", Start: now.Add(-time.Minute), End: now, BytesServed: 2048, Requests: 4},
	} {
		if err := pub.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	conn := []string{"--nats-url", srv.ClientURL(), "--data-dir", t.TempDir()}

	stdout, stderr, code := cli(t, ctx, append([]string{"usage", "--since", "1d", "--by", "tenant"}, conn...)...)
	if code != 0 || !strings.Contains(stdout, "usage by tenant") || !strings.Contains(stdout, "30.0") || !strings.Contains(stdout, "90.0") {
		t.Errorf("usage table: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = cli(t, ctx, append([]string{"usage", "--since", "30d", "--by", "repo", "--csv"}, conn...)...)
	lines, err := csv.NewReader(strings.NewReader(stdout)).ReadAll()
	if code != 0 || err != nil || len(lines) != 4 || lines[0][1] != "repo" || lines[2][1] != "forge-a/alice/pkgs" || lines[2][5] != "30.000" || lines[2][8] != "1000" || lines[3][1] != "forge-b/bob/os" {
		t.Errorf("usage --csv: exit %d, %v, %q\n%s", code, err, lines, stderr)
	}
	stdout, stderr, code = cli(t, ctx, append([]string{"usage", "--by", "reader", "--tenant", "a", "--json"}, conn...)...)
	var rep usage.Report
	if err := json.Unmarshal([]byte(stdout), &rep); code != 0 || err != nil || len(rep.Rows) != 2 || rep.Rows[1].Key != "alice" || rep.Rows[1].BytesServed != 2048 {
		t.Errorf("usage --json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	for _, bad := range [][]string{{"--since", "30x"}, {"--by", "colour"}, {"--json", "--csv"}, {"--builder-id", "r1"}} {
		if _, stderr, code := cli(t, ctx, append(append([]string{"usage"}, bad...), conn...)...); code != exitUsageErr {
			t.Errorf("usage %v: exit %d, want a usage error\n%s", bad, code, stderr)
		}
	}
}
