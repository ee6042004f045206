package action

import (
	"context"
	"errors"
	"fmt"
	"os"

	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/trust"
)

// verifyAll waits for each output's narinfo and verifies it.
func (s *step) verifyAll(ctx context.Context) (string, error) {
	keyFile := s.pubFile
	if s.in.signing == SigningRunner {
		if s.in.verifyKey == "" || s.in.builderID == "" {
			return "", errors.New("verify with signing: runner needs verify-key (the runner's public key) and builder-id")
		}
		f, err := os.CreateTemp(s.tempDir(), "provenix-verify-*.pub")
		if err != nil {
			return "", err
		}
		f.WriteString(s.in.verifyKey + "\n")
		f.Close()
		defer os.Remove(f.Name())
		keyFile = f.Name()
	}
	verdict := VerdictVerified
	var errs []error
	for i := range s.rows {
		r := &s.rows[i]
		if err := s.waitNarinfo(ctx, r.StorePath); err != nil {
			r.Verdict = VerdictNotVerified
			errs = append(errs, err)
			verdict = VerdictNotVerified
			continue
		}
		// As 'provenix verify --cache URL --key FILE --builder-id ID PATH'.
		rep, err := trust.VerifyCacheEntry(ctx, trust.CacheEntry{CacheURL: s.in.cacheURL, StorePath: r.StorePath,
			Key: trust.KeyFile{BuilderID: s.in.builderID, Path: keyFile}, Logger: s.cfg.Logger})
		if err == nil {
			rep.WriteText(s.cfg.Stdout)
		}
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("verify %s: %w", r.StorePath, err))
		case !rep.Verified:
			errs = append(errs, fmt.Errorf("%s is not verified in %s", r.StorePath, s.in.cacheURL))
		}
		if err != nil || !rep.Verified {
			r.Verdict, verdict = VerdictNotVerified, VerdictNotVerified
			continue
		}
		r.Verdict = VerdictVerified
	}
	return verdict, errors.Join(errs...)
}

// waitNarinfo waits up to CacheTimeout for the cache to publish the
// narinfo of storePath.
func (s *step) waitNarinfo(ctx context.Context, storePath string) error {
	c, err := cacheclient.New(cacheclient.Options{URL: s.in.cacheURL, Logger: s.cfg.Logger})
	if err != nil {
		return fmt.Errorf("input cache-url: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CacheTimeout)
	defer cancel()
	if err := c.WaitNarinfo(ctx, storePath); err != nil {
		return fmt.Errorf("the cache %s did not publish %s within %s: %w", s.in.cacheURL, storePath, s.cfg.CacheTimeout, err)
	}
	return nil
}
