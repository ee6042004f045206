package up

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
)

// TestStackRecordsServing: what the stack's cache server serves is
// recorded as the tenant's usage when it closes (and every minute), and
// the usage stream keeps records as long as configured.
func TestStackRecordsServing(t *testing.T) {
	dir := t.TempDir()
	since := time.Now().Add(-time.Second)
	open := func() *Stack {
		s, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", UsageMaxAge: 30 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	var served int64
	for range 3 {
		resp, err := http.Get(s.CacheURL() + "/nix-cache-info")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		served += n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s = open()
	defer s.Close(ctx)
	st, err := s.Conn().JetStream().Stream(ctx, queue.StreamUsage)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxAge; got != 30*24*time.Hour {
		t.Errorf("usage kept %s, want 30 days", got)
	}
	rep, err := usage.Summarize(ctx, s.Conn(), queue.UsageFilter(""), since, usage.ByReader)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 || rep.Rows[0].Tenant != DefaultTenant || rep.Rows[0].Key != usage.Anonymous ||
		rep.Rows[0].Requests != 3 || rep.Rows[0].BytesServed != served || served == 0 {
		t.Errorf("usage %+v, want 3 anonymous requests of %d bytes in all", rep.Rows, served)
	}
}
