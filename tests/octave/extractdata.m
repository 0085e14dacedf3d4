function data = extractdata(X)
% STAND-IN, NOT MATLAB's extractdata (bnconform tests, GNU Octave).
data = X.data;
end
