package usage

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/queue"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func job(tenant, repo, builder string, cpu, wall time.Duration, built, staged int64) *Record {
	return &Record{Version: Version, ID: NewID(), Kind: KindJob, Tenant: tenant, Forge: "https://forge.example/", Repository: repo,
		Workflow: "build.yml", Job: "build", RunID: "7", Builder: builder, Start: t0, End: t0.Add(wall),
		CPUMicros: cpu.Microseconds(), CPUFrom: FromCgroup, PeakMemory: 1 << 20, MemoryFrom: FromRusage, BytesBuilt: built, BytesStaged: staged}
}

func serve(tenant, reader string, bytes, reqs int64) *Record {
	return &Record{Version: Version, ID: NewID(), Kind: KindServe, Tenant: tenant, Reader: reader, Start: t0, End: t0.Add(time.Minute),
		BytesServed: bytes, Requests: reqs}
}

func records() []*Record {
	farm := job("a", "", "vol-1", 4*time.Second, 5*time.Second, 100, 100)
	farm.Kind, farm.Forge, farm.Repository, farm.Workflow, farm.Job, farm.RunID = KindFarm, "", "", "", "", ""
	return []*Record{
		job("a", "alice/pkgs", "r1", 2*time.Second, 3*time.Second, 1000, 1200),
		job("a", "alice/pkgs", "r2", 1500*time.Millisecond, 2*time.Second, 24, 0),
		job("b", "alice/pkgs", "r1", 10*time.Second, 11*time.Second, 5, 5),
		farm,
		serve("a", "alice", 4096, 3),
		serve("a", Anonymous, 10, 1),
		serve("b", "alice", 7, 2),
	}
}

func sum(recs []*Record, by By) []Row {
	a := NewAggregator(by)
	for _, r := range recs {
		a.Add(r)
	}
	return a.Rows()
}

func TestAggregate(t *testing.T) {
	rows := sum(records(), ByTenant)
	if len(rows) != 2 {
		t.Fatalf("rows %+v", rows)
	}
	a, b := rows[0], rows[1]
	if a.Tenant != "a" || a.Jobs != 2 || a.Builds != 1 || a.Serves != 2 || a.CPUSeconds != 7.5 || a.WallSeconds != 10 ||
		a.BytesBuilt != 1124 || a.BytesStaged != 1300 || a.BytesServed != 4106 || a.Requests != 4 || a.PeakMemory != 1<<20 {
		t.Errorf("tenant a: %+v", a)
	}
	if b.Tenant != "b" || b.Jobs != 1 || b.CPUSeconds != 10 || b.BytesBuilt != 5 || b.BytesServed != 7 {
		t.Errorf("tenant b: %+v", b)
	}

	// By repository: within the tenant, the forge's host in front; a
	// farm build and the serve records have none.
	keys := func(rows []Row) []string {
		var out []string
		for _, r := range rows {
			out = append(out, r.Tenant+" "+r.Key)
		}
		return out
	}
	if got := strings.Join(keys(sum(records(), ByRepo)), ", "); got != "a -, a forge.example/alice/pkgs, b -, b forge.example/alice/pkgs" {
		t.Errorf("by repo: %s", got)
	}
	if got := strings.Join(keys(sum(records(), ByBuilder)), ", "); got != "a -, a r1, a r2, a vol-1, b -, b r1" {
		t.Errorf("by builder: %s", got)
	}
	readers := sum(records(), ByReader)
	if got := strings.Join(keys(readers), ", "); got != "a -, a alice, a anonymous, b -, b alice" {
		t.Errorf("by reader: %s", got)
	}
	if readers[1].BytesServed != 4096 || readers[1].Requests != 3 || readers[2].BytesServed != 10 {
		t.Errorf("readers: %+v", readers)
	}
}

func TestCSVAndJSON(t *testing.T) {
	rep := &Report{By: ByTenant, Since: t0.Add(-30 * 24 * time.Hour), Until: t0, Rows: sum(records(), ByTenant)}
	var buf bytes.Buffer
	if err := rep.WriteCSV(&buf); err != nil {
		t.Fatal(err)
	}
	lines, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"tenant", "tenant", "jobs", "builds", "serves", "cpu_seconds", "wall_seconds", "peak_memory_bytes", "bytes_built", "bytes_staged", "bytes_served", "requests"},
		{"a", "a", "2", "1", "2", "7.500", "10.000", "1048576", "1124", "1300", "4106", "4"},
		{"b", "b", "1", "0", "1", "10.000", "11.000", "1048576", "5", "5", "7", "2"},
	}
	if len(lines) != len(want) {
		t.Fatalf("csv: %q", lines)
	}
	for i := range want {
		if strings.Join(lines[i], ",") != strings.Join(want[i], ",") {
			t.Errorf("csv line %d: %q, want %q", i, lines[i], want[i])
		}
	}

	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.By != ByTenant || len(back.Rows) != 2 || back.Rows[0] != rep.Rows[0] || !back.Since.Equal(rep.Since) {
		t.Errorf("json round trip: %s", js)
	}

	buf.Reset()
	rep.Refused = 2
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{"usage by tenant", "7.5", "1.1 KiB", "4.0 KiB", "2 records were not counted"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := t0
	for in, want := range map[string]time.Duration{
		"30d": 30 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "1d12h": 36 * time.Hour,
		"2w3d": 17 * 24 * time.Hour, "1.5d": 36 * time.Hour, "90m": 90 * time.Minute,
	} {
		got, err := ParseSince(in, now)
		if err != nil || !got.Equal(now.Add(-want)) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v", in, got, err, now.Add(-want))
		}
	}
	if got, err := ParseSince("2026-11-01", now); err != nil || !got.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("date: %v %v", got, err)
	}
	for _, bad := range []string{"", "d", "30x", "-3d", "1e3d", "w2", "3dd"} {
		if _, err := ParseSince(bad, now); err == nil {
			t.Errorf("ParseSince(%q) accepted", bad)
		}
	}
}

func TestDecodeChecksTheSubject(t *testing.T) {
	r := job("a", "alice/pkgs", "r1", time.Second, time.Second, 1, 1)
	data, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	own, _ := queue.UsageSubject("a", "r1")
	if got, err := Decode(own, data); err != nil || got.CPUMicros != r.CPUMicros {
		t.Fatalf("own subject: %+v %v", got, err)
	}
	// A runner publishes on its own builder's subject only; a record
	// there claiming another builder or tenant is not counted.
	other, _ := queue.UsageSubject("a", "r2")
	serveSubj, _ := queue.UsageSubject("a", "")
	otherTenant, _ := queue.UsageSubject("b", "r1")
	for _, subj := range []string{other, serveSubj, otherTenant} {
		if _, err := Decode(subj, data); !errors.Is(err, ErrInvalid) {
			t.Errorf("record of a/r1 on %s: %v", subj, err)
		}
	}
	s := serve("a", "alice", 1, 1)
	sd, _ := Encode(s)
	if _, err := Decode(own, sd); !errors.Is(err, ErrInvalid) {
		t.Errorf("serve record on a builder's subject: %v", err)
	}
	if _, err := Decode(serveSubj, sd); err != nil {
		t.Errorf("serve record: %v", err)
	}
	for name, bad := range map[string]func(*Record){
		"negative cpu":    func(r *Record) { r.CPUMicros = -1 },
		"end first":       func(r *Record) { r.End = r.Start.Add(-time.Second) },
		"no builder":      func(r *Record) { r.Builder = "" },
		"unknown kind":    func(r *Record) { r.Kind = "mining" },
		"job with reader": func(r *Record) { r.Reader = "x" },
		"long repository": func(r *Record) { r.Repository = strings.Repeat("x", 600) },
	} {
		c := *r
		bad(&c)
		if _, err := Encode(&c); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Decode(own, append(data[:len(data)-1:len(data)-1], []byte(`,"extra":1}`)...)); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown field: %v", err)
	}
}
