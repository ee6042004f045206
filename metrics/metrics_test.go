package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A nil *Pusher and *HTTP record nothing and do not panic.
func TestNilRecordsNothing(t *testing.T) {
	var p *Pusher
	p.Received()
	p.Published()
	p.Rejected("malformed")
	p.Vote("agreed")
	p.QuorumWait(time.Second)
	p.Push(1, time.Second)
	p.Ingest(1, time.Second)
	if s := p.Status(); s.Received != 0 || s.LastPublication != nil || len(s.Rejections) != 0 {
		t.Fatalf("nil status %+v", s)
	}
	var h *HTTP
	h.ObserveRequest(KindNAR, 200, time.Millisecond)
}

func TestExposition(t *testing.T) {
	m := New()
	m.Pusher.Received()
	m.Pusher.Published()
	m.Pusher.Rejected("policy")
	m.Pusher.Rejected("policy")
	m.Pusher.Vote("pending")
	m.Pusher.Ingest(4<<20, time.Second)
	m.HTTP.ObserveRequest("something-else", 404, time.Millisecond)
	m.GaugeFunc("pusher_consumer_lag", "lag", func() float64 { return 3 })

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		"provenix_pusher_results_received_total 1",
		"provenix_pusher_results_published_total 1",
		`provenix_pusher_rejections_total{reason="policy"} 2`,
		`provenix_pusher_votes_total{verdict="pending"} 1`,
		"provenix_pusher_ingest_nar_bytes_total 4.194304e+06",
		`provenix_cache_http_requests_total{kind="other",status="404"} 1`,
		"provenix_pusher_consumer_lag 3",
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %q in:\n%s", want, body)
		}
	}
	s := m.Pusher.Status()
	if s.Received != 1 || s.Published != 1 || s.LastPublication == nil || s.Rejections["policy"] != 2 {
		t.Fatalf("status %+v", s)
	}
	// A second registry is independent: no global state.
	if New().Pusher.Status().Received != 0 {
		t.Fatal("registries share state")
	}
}
