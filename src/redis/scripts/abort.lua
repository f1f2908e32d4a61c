-- abort.lua: sent under the request (requests hash, request id) of an earlier call whose
-- outcome the store never learned (both its attempts lost their replies). Like every
-- script it answers from the record when that call ran; else it records "aborted" under
-- the call's request id, so that an attempt of it still on its way finds that answer and
-- changes nothing. Writes nothing else.
-- ARGV (after the common head of common.lua): none.
-- Reply: "aborted" | the earlier call's recorded answer.
return answer('aborted')
