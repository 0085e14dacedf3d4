function X = dlarray(data, fmt)
% STAND-IN, NOT MATLAB's dlarray (bnconform tests, GNU Octave): a struct holding the data and its format labels.
if nargin < 2
    fmt = '';
end
X = struct('data', data, 'fmt', fmt);
end
