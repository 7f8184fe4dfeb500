// Node 20 has no Promise.withResolvers (it arrived in Node 22); js-libp2p 3.x and its
// dependencies call it. peer.mjs imports this module before anything from libp2p.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      const out = {}
      out.promise = new this((resolve, reject) => { out.resolve = resolve; out.reject = reject })
      return out
    }
  })
}
