package up

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/queue"
)

// Endpoints served next to the cache (or on Config.MetricsListen).
const (
	MetricsPath = "/metrics"
	StatusPath  = "/status"
)

// statusTimeout bounds the broker calls of one status or scrape.
const statusTimeout = 5 * time.Second

// Status is what /status reports about a running stack.
type Status struct {
	Started time.Time `json:"started"`
	Uptime  string    `json:"uptime"`
	NATSURL string    `json:"natsUrl"`
	// WebSocketURL, LeafNodeURL and JetStreamDomain: see Runtime.
	WebSocketURL    string `json:"websocketUrl,omitempty"`
	LeafNodeURL     string `json:"leafnodeUrl,omitempty"`
	JetStreamDomain string `json:"jetstreamDomain,omitempty"`
	Tenant          string `json:"tenant"`
	Group           string `json:"group"`
	// Streams maps each JetStream stream to its message count.
	Streams map[string]uint64 `json:"streams"`
	// ConsumerLag is the results the group's consumer has not delivered
	// yet; ConsumerAckPending those delivered and not yet acknowledged.
	ConsumerLag        uint64               `json:"consumerLag"`
	ConsumerAckPending int                  `json:"consumerAckPending"`
	Pusher             metrics.PusherStatus `json:"pusher"`
	// Waiting is how many decided paths wait for their references.
	Waiting int      `json:"waiting"`
	Errors  []string `json:"errors,omitempty"`
}

// Status reads the stack's counters and asks the broker for stream sizes
// and the consumer's lag; what the broker does not answer is listed in
// Errors rather than failing the whole status.
func (s *Stack) Status(ctx context.Context) *Status {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st := &Status{
		Started: s.started, Uptime: time.Since(s.started).Round(time.Second).String(),
		NATSURL: queue.RedactURL(s.natsURL), WebSocketURL: s.WebSocketURL(), LeafNodeURL: s.LeafNodeURL(), JetStreamDomain: s.JetStreamDomain(),
		Tenant: s.cfg.Tenant, Group: s.cfg.Group,
		Streams: map[string]uint64{}, Pusher: s.metrics.Pusher.Status(),
	}
	if s.nats != nil {
		if err := s.nats.StorageError(); err != nil {
			st.Errors = append(st.Errors, "embedded NATS: "+err.Error())
		}
	}
	if s.conn == nil {
		st.Errors = append(st.Errors, "not connected to NATS")
		return st
	}
	js := s.conn.JetStream()
	for _, name := range []string{queue.StreamResults, queue.StreamEvents, queue.StreamRebuild} {
		str, err := js.Stream(ctx, name)
		if err != nil {
			st.Errors = append(st.Errors, fmt.Sprintf("stream %s: %v", name, err))
			continue
		}
		info, err := str.Info(ctx)
		if err != nil {
			st.Errors = append(st.Errors, fmt.Sprintf("stream %s: %v", name, err))
			continue
		}
		st.Streams[name] = info.State.Msgs
	}
	if ws, err := cachepush.ListWaiting(ctx, s.conn); err != nil {
		st.Errors = append(st.Errors, fmt.Sprintf("waiting entries: %v", err))
	} else {
		st.Waiting = len(ws)
	}
	if ci, err := s.consumerInfo(ctx); err != nil {
		st.Errors = append(st.Errors, fmt.Sprintf("consumer: %v", err))
	} else {
		st.ConsumerLag, st.ConsumerAckPending = ci.NumPending, ci.NumAckPending
	}
	return st
}

// consumerInfo asks the broker about the pusher group's durable consumer.
func (s *Stack) consumerInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	c, err := s.conn.JetStream().Consumer(ctx, queue.StreamResults, queue.ConsumerPrefix+s.cfg.Group)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

// consumerLag is the gauge function of the consumer's lag: NaN when the
// broker does not answer.
func (s *Stack) consumerLag() float64 {
	if s.conn == nil {
		return math.NaN()
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	ci, err := s.consumerInfo(ctx)
	if err != nil {
		return math.NaN()
	}
	return float64(ci.NumPending)
}

func (s *Stack) serveStatus(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	b, err := json.MarshalIndent(s.Status(r.Context()), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(b, '\n'))
}

// FetchStatus reads /status from the stack running on p's data directory.
func FetchStatus(ctx context.Context, p Paths) (*Status, error) {
	rt, err := ReadRuntime(p)
	if err != nil {
		return nil, err
	}
	if rt.StatusURL == "" {
		return nil, errors.New("the running provenix up serves no status (older version)")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rt.StatusURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", rt.StatusURL, resp.Status)
	}
	var st Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s: %w", rt.StatusURL, err)
	}
	return &st, nil
}
