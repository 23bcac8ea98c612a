// Package certrenew keeps a host's certificate current: it renews it in
// the last third of its life, and picks up a certificate that `vigil cert
// rotate` wrote. A member that holds the CA key signs its own; any other
// host asks a member, authenticated by the certificate it is renewing,
// and the member signs for the host that certificate names.
//
// The daemons' TLS configurations take the certificate from the
// Identity at each handshake (etcd reads the files at each handshake), so
// a renewal needs no restart and breaks no connection.
package certrenew

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/pki"
)

// Renewer renews one host's certificate.
type Renewer struct {
	ID *pki.Identity
	// APIs are members' https APIs, asked when this host has no CA key.
	APIs []string
	// Lifetime is a certificate's lifetime when this host signs its own.
	Lifetime time.Duration
	Log      *slog.Logger
}

// Run checks now and then until ctx ends: a certificate due for renewal
// is renewed; one that changed on disk is loaded.
func (r *Renewer) Run(ctx context.Context) {
	for {
		if r.ID.Changed() {
			if err := r.ID.Reload(); err != nil {
				r.Log.Error("the new host certificate does not load; keeping the old one", "err", err)
			} else {
				r.Log.Info("host certificate reloaded", "serial", r.ID.Leaf().SerialNumber.Text(16), "not_after", r.ID.Leaf().NotAfter)
			}
		}
		if r.ID.RenewDue(time.Now()) {
			if err := r.Renew(ctx); err != nil {
				r.Log.Warn("host certificate renewal failed; retrying", "not_after", r.ID.Leaf().NotAfter, "err", err)
			}
		}
		if err := r.EnsureStream(ctx); err != nil {
			r.Log.Warn("stream certificate renewal failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.interval()):
		}
	}
}

// interval is how often Run checks: a tenth of the certificate's life,
// between 2 s and 10 min.
func (r *Renewer) interval() time.Duration {
	l := r.ID.Leaf()
	return min(max(l.NotAfter.Sub(l.NotBefore)/10, 2*time.Second), 10*time.Minute)
}

// Renew gives this host a new key and certificate now, and loads them.
func (r *Renewer) Renew(ctx context.Context) error {
	dir := r.ID.Dir()
	sub := r.ID.Subject()
	old := r.ID.Leaf()
	if ca, err := pki.LoadAuthority(dir); err == nil {
		life := r.Lifetime
		if life <= 0 {
			life = old.NotAfter.Sub(old.NotBefore)
		}
		if err := pki.IssueLocal(dir, ca, sub, time.Now(), life); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	} else if err := r.renewRemote(ctx, dir, sub.Host); err != nil {
		return err
	}
	if err := r.ID.Reload(); err != nil {
		return err
	}
	r.Log.Info("host certificate renewed", "host", sub.Host, "serial", r.ID.Leaf().SerialNumber.Text(16), "not_after", r.ID.Leaf().NotAfter)
	return nil
}

// EnsureStream gives this host a new stream certificate if it has none or
// the one it has is due for renewal (pki.StreamDue). QEMU and the storage
// daemons read it from disk when they next set up a stream.
func (r *Renewer) EnsureStream(ctx context.Context) error {
	dir := r.ID.Dir()
	if !pki.StreamDue(dir, time.Now()) {
		return nil
	}
	sub := r.ID.Subject()
	sca, err := r.streamAuthority(dir)
	if err == nil {
		if err := pki.IssueLocalStream(dir, sca, sub, time.Now()); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	} else {
		if len(r.APIs) == 0 {
			return errors.New("this host has no CA key and knows no member to ask for its stream certificate (cluster.json)")
		}
		kb, out, err := r.askMember(ctx, sub.Host, func(csr string) v1.RenewRequest { return v1.RenewRequest{StreamCSR: csr} })
		if err != nil {
			return fmt.Errorf("stream certificate through a member: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(dir, pki.StreamCACertFile), []byte(out.StreamCA), 0o644); err != nil {
			return err
		}
		if err := pki.SaveStream(dir, []byte(out.StreamCert), kb); err != nil {
			return err
		}
	}
	r.Log.Info("stream certificate issued", "host", sub.Host)
	return nil
}

// streamAuthority is the stream CA, on a host that holds its key. A
// member of a cluster made before stream CAs existed (it holds the cluster
// CA's key but no stream CA) makes one; the other members then need a copy
// of its files (stream-ca.crt, stream-ca.key), or hosts they admit get
// stream certificates that the others' QEMUs refuse.
func (r *Renewer) streamAuthority(dir string) (*pki.Authority, error) {
	sca, err := pki.LoadStreamAuthority(dir)
	if !errors.Is(err, os.ErrNotExist) {
		return sca, err
	}
	if _, err := pki.LoadAuthority(dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, pki.StreamCACertFile)); err == nil {
		return nil, os.ErrNotExist // a copy of another member's, without its key
	}
	if sca, err = pki.NewStreamAuthority(r.ID.Host(), time.Now()); err != nil {
		return nil, err
	}
	if err := sca.SaveStreamCA(dir); err != nil {
		return nil, err
	}
	r.Log.Warn("made this cluster's stream CA: copy stream-ca.crt and stream-ca.key to the other control-plane members", "dir", dir)
	return sca, nil
}

func (r *Renewer) renewRemote(ctx context.Context, dir, host string) error {
	if len(r.APIs) == 0 {
		return errors.New("this host has no CA key and knows no member to ask (cluster.json)")
	}
	kb, out, err := r.askMember(ctx, host, func(csr string) v1.RenewRequest { return v1.RenewRequest{CSR: csr} })
	if err != nil {
		return fmt.Errorf("renew through a member: %w", err)
	}
	return pki.SaveHost(dir, []byte(out.Cert), kb)
}

// askMember makes a key for host and has a member sign it (the request
// req builds from the key's certificate request), authenticated by this
// host's current certificate; it returns the new key and the answer.
func (r *Renewer) askMember(ctx context.Context, host string, req func(csr string) v1.RenewRequest) ([]byte, v1.RenewResponse, error) {
	var out v1.RenewResponse
	key, csr, err := pki.NewCSR(host)
	if err != nil {
		return nil, out, err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: r.ID.ClientTLS()}}
	if err := client.PostFirst(ctx, hc, r.APIs, "/api/v1/certificates/renew", req(string(csr)), &out); err != nil {
		return nil, out, err
	}
	kb, err := pki.EncodeKey(key)
	return kb, out, err
}
