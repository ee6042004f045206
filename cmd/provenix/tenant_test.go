package main

import (
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
)

func TestByteSizeFlag(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "10GiB": 10 << 30, "2 TiB": 2 << 40, "64K": 64 << 10, "-1": -1,
	} {
		var v int64
		if err := (byteSize{&v}).Set(in); err != nil || v != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, v, err, want)
		}
	}
	for _, in := range []string{"", "x", "1.5GiB", "-2", "-1GiB", "12Q", "99999999999TiB"} {
		var v int64
		if err := (byteSize{&v}).Set(in); err == nil {
			t.Errorf("Set(%q) accepted: %d", in, v)
		}
	}
}

func TestTenantAddUsage(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	dir := t.TempDir()
	if _, _, code := cli(t, ctx, "tenant", "add", "Bad.Name", "--dir", dir); code != exitUsageErr {
		t.Errorf("bad name: exit %d", code)
	}
	if _, _, code := cli(t, ctx, "tenant", "add", "ok", "--dir", dir, "--max-streams", "2"); code == 0 {
		t.Error("max streams 2 accepted")
	}
	stdout, stderr, code := cli(t, ctx, "tenant", "add", "ok", "--dir", dir)
	if code != 0 || !strings.Contains(stdout, "ok: {") || !strings.Contains(stdout, "--nats-nkey") || !strings.Contains(stdout, "submitter.nk --tenant ok") {
		t.Fatalf("tenant add: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, stderr, code := cli(t, ctx, "tenant", "add", "ok", "--dir", dir); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("second tenant add: exit %d\n%s", code, stderr)
	}
}
