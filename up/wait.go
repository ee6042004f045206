package up

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/queue"
)

// waitPoll is how often WaitPublished looks for the narinfo.
const waitPoll = 20 * time.Millisecond

// WaitPublished waits until the stack's cache holds the narinfo of
// outPath, an output of drvPath, or its pusher rejects a result for
// drvPath: a rejection event of the stack's tenant at or after since (the
// events stream keeps them, so one published before the wait began is
// seen too). A rejection is the pusher's own error type, a
// *cachepush.RejectedError with the event's reason and error (matching
// cachepush.ErrRejected); the end of ctx is its error.
func (s *Stack) WaitPublished(ctx context.Context, drvPath, outPath string, since time.Time) error {
	subj, err := queue.EventsSubject(s.cfg.Tenant, queue.EventRejected)
	if err != nil {
		return err
	}
	cons, err := s.conn.JetStream().OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj}, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return fmt.Errorf("watch rejections: %w", err)
	}
	rejected := make(chan cachepush.Rejection, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var rej cachepush.Rejection
		if json.Unmarshal(m.Data(), &rej) == nil && rej.DrvPath == drvPath {
			select {
			case rejected <- rej:
			default: // one is enough
			}
		}
	})
	if err != nil {
		return fmt.Errorf("watch rejections: %w", err)
	}
	defer cc.Stop()
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		if _, err := s.store.Stat(ctx, cachelayout.NarinfoKey(outPath)); err == nil {
			return nil
		}
		select {
		case rej := <-rejected:
			return &cachepush.RejectedError{Reason: rej.Reason, Err: errors.New(rej.Error)}
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
