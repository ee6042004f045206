package cachepush

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/storepath"
)

// Process pushes one result message. It returns nil when the result is in
// the cache (now or already), a *RejectedError (matching ErrRejected)
// marked queue.ErrPermanent when it must never be retried, and any other
// error when it may succeed later.
func (p *Pusher) Process(ctx context.Context, subject string, data []byte, msgID string) error {
	r, err := queue.DecodeResult(data)
	return p.process(ctx, subject, data, msgID, r, err)
}

// process is Process for data already decoded into r (or its decoding
// error err): Handle decodes once, for scheduling and for the push.
func (p *Pusher) process(ctx context.Context, subject string, data []byte, msgID string, r *queue.Result, err error) error {
	p.cfg.Metrics.Received()
	rej := Rejection{Tenant: tenantOf(subject), MsgID: msgID}
	if err != nil {
		reason := ReasonMalformed
		if errors.Is(err, queue.ErrTooLarge) {
			reason = ReasonTooLarge
		} else if b, serr := p.signedMalformed(data); b != "" {
			// Signed by a trusted builder: its fault, whoever relayed it.
			rej.Builder = b
			p.chargeMalformed(ctx, b, rawBundle(data))
			err = fmt.Errorf("%w; builder %s signed it: %w", err, b, serr)
		}
		return p.reject(ctx, rej, rejected(reason, err))
	}
	rej.Tenant, rej.Builder, rej.DrvPath, rej.System = r.Tenant, r.Builder, r.DrvPath, r.System
	if want, err := queue.ResultsSubject(r.Tenant, r.System); err != nil || want != subject {
		return p.reject(ctx, rej, rejected(ReasonInconsistent, fmt.Errorf("result for %s.%s arrived on subject %q", r.Tenant, r.System, subject)))
	}
	if err := p.cfg.Policy.Check(r); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	want := make([]attest.Subject, 0, len(r.Outputs))
	for _, o := range r.Outputs {
		// Validate (in DecodeResult) checked the hex shape.
		s := attest.Subject{Path: o.Path}
		hex.Decode(s.NarHash[:], []byte(o.NarHash))
		want = append(want, s)
	}
	v, err := p.verifier.Verify(r.Bundle, want)
	var sm *attest.SignedMalformedError
	if errors.As(err, &sm) {
		rej.Builder = sm.BuilderID
		p.chargeMalformed(ctx, sm.BuilderID, r.Bundle)
		return p.reject(ctx, rej, rejected(ReasonMalformed, err))
	}
	if err != nil {
		return p.reject(ctx, rej, rejected(ReasonVerification, err))
	}
	if err := statementErr(v); err != nil {
		// What the builder signed is malformed: its fault.
		rej.Builder = v.BuilderID
		p.chargeMalformed(ctx, v.BuilderID, r.Bundle)
		return p.reject(ctx, rej, rejected(ReasonMalformed, fmt.Errorf("builder %s signed a malformed statement: %w", v.BuilderID, err)))
	}
	if err := consistent(r, v); err != nil {
		return p.reject(ctx, rej, rejected(ReasonInconsistent, err))
	}
	if err := ownScope(r); err != nil {
		return p.reject(ctx, rej, rejected(ReasonInconsistent, err))
	}
	if err := p.cfg.Policy.CheckSource(v.External); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	if err := p.cfg.Policy.CheckIsolation(v.External); err != nil {
		return p.reject(ctx, rej, rejected(ReasonPolicy, err))
	}
	if err := p.checkOutputPaths(ctx, r, v); err != nil {
		var re *RejectedError
		if errors.As(err, &re) {
			if errors.Is(re, ErrOutputPath) {
				// The signed statement names an output its own
				// derivation (content-addressed, so authentic) does not
				// compute: the builder's claim is false.
				p.chargeMalformed(ctx, v.BuilderID, r.Bundle)
			}
			return p.reject(ctx, rej, re)
		}
		return fmt.Errorf("output paths of %s: %w", v.DrvPath, err)
	}
	// The round trips that need not hold up what follows them (reputation
	// marks, publication events) run alongside it; all are done before
	// process returns, so before the result is acked.
	var after sync.WaitGroup
	defer after.Wait()
	// From here on, paths referring to these may wait for this handler.
	for _, o := range r.Outputs {
		defer p.flying(o.Path)()
	}
	for _, o := range r.Sources {
		defer p.flying(o.Path)()
	}

	byPath := make(map[string]attest.Output, len(v.Outputs))
	for _, o := range v.Outputs {
		byPath[o.Path] = o
	}
	needMore := false
	defer func() {
		if needMore {
			p.requestRebuild(ctx, r)
		}
	}()
	fail := func(path string, err error) error {
		var re *RejectedError
		if errors.As(err, &re) {
			return p.reject(ctx, rej, re)
		}
		if unfixable(err) {
			// An invalid key or name, a value that does not decode: the
			// same again next time.
			return p.reject(ctx, rej, rejected(ReasonMalformed, fmt.Errorf("push %s: %w", path, err)))
		}
		return fmt.Errorf("push %s: %w", path, err)
	}
	// Sources first: the outputs usually refer to them, and find them
	// visible instead of waiting.
	for _, src := range r.Sources {
		out := attest.Output{Name: src.Name, Path: src.Path, NarSize: src.NarSize, References: src.References}
		hex.Decode(out.NarHash[:], []byte(src.NarHash)) // Validate checked the shape
		c, err := checkCAPathIn(src.CA, out)
		if err != nil {
			return p.reject(ctx, rej, rejected(ReasonContentAddress, err))
		}
		m := entryMeta{tenant: r.Tenant, builder: r.Builder, msgID: msgID, ca: &c}
		oc, err := p.writeEntry(ctx, m, out, src.StagingKey, nil, nil, nil)
		if err != nil {
			return fail(src.Path, err)
		}
		p.report(ctx, m, out, oc, &after)
	}
	for _, o := range outputOrder(r.Outputs, byPath) {
		var oc outcome
		var err error
		out := byPath[o.Path]
		m := entryMeta{tenant: r.Tenant, builder: r.Builder, msgID: msgID, drv: v.DrvPath}
		if o.CA != "" {
			// A fixed-output derivation's output: its content is fixed by
			// the derivation, so one trusted builder's result suffices.
			c, cerr := checkCAPathIn(o.CA, out)
			if cerr != nil {
				return p.reject(ctx, rej, rejected(ReasonContentAddress, cerr))
			}
			m.ca = &c
			oc, err = p.writeEntry(ctx, m, out, o.StagingKey, []json.RawMessage{r.Bundle},
				nonEmpty(p.checkNixSig(v.BuilderID, o.NixSig, out)), nil)
		} else {
			var pending bool
			oc, pending, err = p.vote(ctx, r, v, out, o, msgID, &after)
			needMore = needMore || pending
		}
		if err != nil {
			return fail(o.Path, err)
		}
		p.report(ctx, m, out, oc, &after)
	}
	return nil
}

// consistent checks that the unsigned fields of r say what the verified
// Statement says; the cache is written from the Statement alone.
func consistent(r *queue.Result, v *attest.Verified) error {
	if v.DrvPath != r.DrvPath || v.System != r.System || v.BuilderID != r.Builder {
		return fmt.Errorf("result says %s/%s by %s, its statement %s/%s by %s",
			r.DrvPath, r.System, r.Builder, v.DrvPath, v.System, v.BuilderID)
	}
	if len(v.Outputs) != len(r.Outputs) {
		return fmt.Errorf("result has %d outputs, its statement %d", len(r.Outputs), len(v.Outputs))
	}
	if err := storepath.Check(v.DrvPath); err != nil {
		return fmt.Errorf("derivation: %w", err)
	}
	byPath := make(map[string]attest.Output, len(v.Outputs))
	for _, o := range v.Outputs {
		byPath[o.Path] = o
	}
	for _, o := range r.Outputs {
		s := byPath[o.Path]
		if s.NarSize != o.NarSize || s.Name != o.Name {
			return fmt.Errorf("output %s: result says %s, %d bytes; statement %s, %d bytes", o.Path, o.Name, o.NarSize, s.Name, s.NarSize)
		}
		if err := storepath.Check(o.Path); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		for _, ref := range s.References {
			if err := storepath.Check(ref); err != nil {
				return fmt.Errorf("output %s: reference: %w", o.Path, err)
			}
		}
	}
	return nil
}

// ownScope checks that r's staged NARs are in its builder's staging
// scope, or in no scope: a builder stages in its own (queue.ScopedKey).
// The keys are not signed, so anyone who may publish results can relay a
// builder's signed result with keys of its own choosing; one in another
// builder's scope would have the pusher read that builder's bytes under
// this builder's vote.
func ownScope(r *queue.Result) error {
	own := queue.StagingScope(r.Builder)
	for _, o := range slices.Concat(r.Outputs, r.Sources) {
		if scope, ok := queue.KeyScope(o.StagingKey); ok && scope != own {
			return fmt.Errorf("%s is staged under %s, not in its builder %s's staging scope", o.Path, o.StagingKey, r.Builder)
		}
	}
	return nil
}

func (p *Pusher) event(ctx context.Context, tenant, kind string, v any) {
	if p.cfg.Events == nil {
		return
	}
	if queue.ValidToken(tenant) != nil {
		tenant = "_unknown"
	}
	if err := p.cfg.Events.PublishEvent(ctx, tenant, kind, v); err != nil {
		// The decision stands and is logged; losing its event is not a
		// reason to redo a push.
		p.log.Warn("event not published", "kind", kind, "err", err)
	}
}

// tenantOf reads the tenant token of a results.<tenant>.<system> subject.
func tenantOf(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) == 3 {
		return parts[1]
	}
	return ""
}

// requestRebuild asks volunteers to build r's derivation. The request is
// deduplicated per derivation by the stream, so every pending vote may ask.
func (p *Pusher) requestRebuild(ctx context.Context, r *queue.Result) {
	if p.cfg.Rebuilds == nil {
		return
	}
	req := &queue.RebuildRequest{Version: queue.RebuildVersion, Tenant: r.Tenant, System: r.System, DrvPath: r.DrvPath,
		Closure: r.Closure, Requested: time.Now().UTC()}
	for _, o := range r.Outputs {
		req.Outputs = append(req.Outputs, o.Path)
	}
	if _, err := p.cfg.Rebuilds.PublishRebuild(ctx, req); err != nil {
		p.log.Warn("rebuild request not published", "drv", r.DrvPath, "err", err)
		return
	}
	p.log.Info("rebuild requested", "drv", r.DrvPath, "system", r.System)
}
